"""Servers a test starts for itself, in a folder of its own, on free ports: PgBouncer in transaction
mode in front of the test PostgreSQL, and a Redis master with a replica and three sentinels.

    with pgbouncer("postgresql+psycopg://postgres@127.0.0.1:5432/test_x") as url:   # the URL through it
        ...
    with sentinel_group() as group:       # group.broker_url: sentinel://...;sentinel://...;sentinel://...
        group.kill_master()                # SIGKILL; the sentinels promote the replica
        group.wait_failover()

`python -m tests.support.servers pgbouncer URL` runs one in the foreground (printing the URL through
it) for running other test modules through it: `TEST_PG_URL=<that url> pytest tests/test_x.py`; or
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


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "pgbouncer":
        sys.exit("usage: python -m tests.support.servers pgbouncer POSTGRES_URL")
    with pgbouncer(sys.argv[2]) as through:
        print(through, flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
