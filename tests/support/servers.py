"""Servers a test starts for itself, in a folder of its own, on free ports: PgBouncer in transaction
mode in front of the test PostgreSQL, a Redis master with a replica and three sentinels, and a
RabbitMQ node of its own (restarting it disturbs no other test).

    with pgbouncer("postgresql+psycopg://postgres@127.0.0.1:5432/test_x") as url:   # the URL through it
        ...
    with sentinel_group() as group:       # group.broker_url: sentinel://...;sentinel://...;sentinel://...
        group.kill_master()                # SIGKILL; the sentinels promote the replica
        group.wait_failover()

`python -m tests.support.servers pgbouncer URL` runs one in the foreground (printing the URL through
it) for running other test modules through it: `TEST_PG_URL=<that url> pytest tests/servers/test_x.py`; or
set TEST_PGBOUNCER=1 and the suite's conftest starts one itself.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
MASTER_NAME = "sagas-ha"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited: {log.read_text()[-2000:] if log.exists() else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on port {port}: {log.read_text()[-2000:] if log.exists() else ''}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ PgBouncer


def pgbouncer_config(folder: Path, port: int, server_host: str, server_port: int, pool_size: int) -> Path:
    (folder / "users.txt").write_text('"postgres" ""\n')
    cfg = folder / "pgbouncer.ini"
    cfg.write_text(f"""[databases]
* = host={server_host} port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / 'users.txt'}
admin_users = postgres
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
max_db_connections = {pool_size}
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {folder / 'pgbouncer.log'}
pidfile = {folder / 'pgbouncer.pid'}
""")
    return cfg


@contextmanager
def pgbouncer(pg_url: str, pool_size: int = 20) -> Iterator[str]:
    """PgBouncer in transaction mode in front of `pg_url`'s server, on a free port; yields `pg_url`
    pointed at it, with `?prepare_threshold=none` (PgBouncer 1.18 keeps no prepared statements)."""
    folder = Path(tempfile.mkdtemp(prefix="saga-pgbouncer-"))
    folder.chmod(0o777)  # pgbouncer refuses to run as root: it runs as postgres, and writes its log here
    u = make_url(pg_url)
    port = free_port()
    cfg = pgbouncer_config(folder, port, u.host or "127.0.0.1", u.port or 5432, pool_size)
    as_user = {"user": "postgres"} if os.geteuid() == 0 else {}
    proc = subprocess.Popen([PGBOUNCER, str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **as_user)  # type: ignore[call-overload]
    try:
        wait_port(port, proc, folder / "pgbouncer.log")
        through = u.set(host="127.0.0.1", port=port).update_query_dict({"prepare_threshold": "none"})
        yield through.render_as_string(hide_password=False)
    finally:
        stop(proc)
        shutil.rmtree(folder, ignore_errors=True)


def session_pgbouncer(pg_url: str) -> str:
    """PgBouncer in front of `pg_url` until this process exits (TEST_PGBOUNCER=1, in conftest): the
    URL through it. Its databases are PostgreSQL's (`* = host=...`), so `fresh_pg_database` works."""
    import atexit

    running = pgbouncer(pg_url)
    url = running.__enter__()
    atexit.register(running.__exit__, None, None, None)
    return url


# ------------------------------------------------------------------ Redis with Sentinel


class SentinelGroup:
    """A Redis master, one replica and three sentinels (quorum 2), each a redis-server of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _server(self, port: int, *args: str, sentinel: bool = False) -> None:
        d = self.folder / str(port)
        d.mkdir()
        conf = d / ("sentinel.conf" if sentinel else "redis.conf")
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {d}", f"logfile {d / 'log'}", "save \"\"",
                 "appendonly no", "protected-mode no", *args]
        conf.write_text("\n".join(lines) + "\n")
        cmd = ["redis-server", str(conf)] + (["--sentinel"] if sentinel else [])
        self.procs[port] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                            start_new_session=True)
        wait_port(port, self.procs[port], d / "log")

    def start(self) -> None:
        self._server(self.master_port)
        self._server(self.replica_port, f"replicaof 127.0.0.1 {self.master_port}")
        for port in self.sentinel_ports:
            self._server(port, f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2",
                         f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                         f"sentinel failover-timeout {MASTER_NAME} 5000",
                         f"sentinel parallel-syncs {MASTER_NAME} 1", sentinel=True)
        self.wait_master(self.master_port)

    @property
    def broker_url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}/0" for p in self.sentinel_ports)

    def sentinel(self):  # type: ignore[no-untyped-def]
        from redis.sentinel import Sentinel

        return Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=1.0)

    def master_port_now(self) -> int | None:
        import redis

        for port in self.sentinel_ports:
            try:
                found = redis.Redis(port=port, socket_timeout=1.0).sentinel_get_master_addr_by_name(MASTER_NAME)
                if found:
                    return int(found[1])
            except redis.RedisError:  # a sentinel that is not up: ask the next
                continue
        return None

    def wait_master(self, port: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_port_now() == port:
                return
            time.sleep(0.1)
        raise RuntimeError(f"the sentinels do not name 127.0.0.1:{port} master within {timeout:g}s")

    def master(self):  # type: ignore[no-untyped-def]
        """A client of whichever server is master now."""
        return self.sentinel().master_for(MASTER_NAME, socket_timeout=2.0)

    def kill_master(self) -> None:
        self.procs[self.master_port].send_signal(signal.SIGKILL)
        self.procs[self.master_port].wait(5)

    def wait_failover(self, timeout: float = 60.0) -> float:
        """Seconds until the sentinels name the replica master."""
        t0 = time.monotonic()
        self.wait_master(self.replica_port, timeout)
        return time.monotonic() - t0

    def stop(self) -> None:
        for proc in self.procs.values():
            stop(proc)


@contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of this test's own on a free port (a broker no other worker consumes); its URL."""
    folder = Path(tempfile.mkdtemp(prefix="saga-redis-"))
    group = SentinelGroup(folder)
    try:
        group._server(group.master_port)
        yield f"redis://127.0.0.1:{group.master_port}/0"
    finally:
        group.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def sentinel_group() -> Iterator[SentinelGroup]:
    folder = Path(tempfile.mkdtemp(prefix="saga-sentinel-"))
    group = SentinelGroup(folder)
    try:
        group.start()
        yield group
    finally:
        group.stop()
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------ RabbitMQ


RABBITMQ = "/usr/lib/rabbitmq/bin"


class RabbitNode:
    """A RabbitMQ node of this test's own (its own name, ports, data and no plugins), so stopping
    and starting it disturbs no one else's queues. `url` is its AMQP URL (vhost /)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port, dist = free_port(), free_port()
        self.node = f"sagas-{os.getpid()}-{self.port}@localhost"
        (folder / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        (folder / "env.conf").write_text("")
        (folder / "plugins").write_text("[].\n")
        self.env = {**os.environ, "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq.conf"),
                    "RABBITMQ_CONF_ENV_FILE": str(folder / "env.conf"), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"), "RABBITMQ_LOG_BASE": str(folder / "log"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "plugins"), "RABBITMQ_DIST_PORT": str(dist),
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        log = self.folder / "server.log"
        self.proc = subprocess.Popen([f"{RABBITMQ}/rabbitmq-server"], env=self.env, stdout=log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port, self.proc, log, timeout=90)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run([f"{RABBITMQ}/rabbitmqctl", "-n", self.node, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def queue_types(self) -> dict[str, str]:
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "type")
        return dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)

    def bindings(self) -> list[tuple[str, str, str]]:
        """(source exchange, destination queue, routing key) of every binding to a queue."""
        out = self.ctl("list_bindings", "-q", "--no-table-headers", "source_name", "destination_name",
                       "destination_kind", "routing_key")
        rows = [line.split("\t") for line in out.splitlines() if line.count("\t") == 3]
        return [(source, dest, key) for source, dest, kind, key in rows if kind == "queue"]

    def restart(self) -> float:
        """`stop_app`, then `start_app` (every connection closed, every queue's messages kept); seconds."""
        t0 = time.monotonic()
        self.ctl("stop_app")
        self.ctl("start_app")
        return time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.ctl("shutdown", timeout=60)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextmanager
def rabbitmq_node() -> Iterator[RabbitNode]:
    folder = Path(tempfile.mkdtemp(prefix="saga-rabbitmq-"))
    node = RabbitNode(folder)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "pgbouncer":
        sys.exit("usage: python -m tests.support.servers pgbouncer POSTGRES_URL")
    with pgbouncer(sys.argv[2]) as through:
        print(through, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
