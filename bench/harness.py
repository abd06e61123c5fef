"""The bench's machinery: its worker subprocess, an RSS sampler, and the closed-loop driver.

The driver keeps `window` sagas (or chains) in flight: it starts one whenever one finishes, so
throughput is measured at a steady load and latency is service time plus a bounded queue, not
the size of a backlog. A run is finished when the driver sees it terminal (a bare chain's last
link wrote to `bench:done`; the chain with state's row counts 4 updates; the saga's row is
COMPLETED/COMPENSATED): the same poll, every few ms, times every configuration.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ worker


class BenchWorker:
    """`celery -A worker worker -P prefork` on the bench's queues, in its own process group."""

    def __init__(self, env: dict[str, str], queues: str, concurrency: int = 2) -> None:
        self.name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.log = Path(f"/tmp/{self.name}.log")
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", str(concurrency),
               "-Q", queues, "-n", f"{self.name}@%h", "--loglevel=WARNING", "--without-gossip", "--without-mingle"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, app: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench worker exited: {self.log.read_text()[-2000:]}")
            if app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5):
                return
        raise RuntimeError(f"bench worker not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def tree_rss(pid: int) -> dict[int, int]:
    """RSS in bytes of `pid` and all its descendants, by pid."""
    try:
        import psutil
    except ImportError:  # Linux without psutil: read /proc
        return _proc_tree_rss(pid)
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    out = {}
    for p in procs:
        try:
            out[p.pid] = p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return out


def _proc_tree_rss(pid: int) -> dict[int, int]:
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                out[p] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def cpu_seconds(pids: list[int] | set[int]) -> dict[int, float]:
    """User + system CPU seconds used so far by each of `pids` that still exists."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return out


class CpuMeter:
    """CPU seconds spent by the worker tree, by the database backends serving the bench and by the
    Redis server (all of it: `INFO cpu`), and how busy the machine's cores were (`/proc/stat`)."""

    def __init__(self, worker_pids: int | list[int], pg: Any, redis: Any = None) -> None:
        self.worker_pids = [worker_pids] if isinstance(worker_pids, int) else list(worker_pids)
        self.pg, self.redis = pg, redis
        self.own_backend = pg.get_backend_pid()  # the driver's polling connection: not counted

    def backends(self) -> set[int]:
        with self.pg.cursor() as cur:
            cur.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s",
                        (self.own_backend,))
            return {p for (p,) in cur.fetchall()}

    def redis_seconds(self) -> float:
        if self.redis is None:
            return 0.0
        info = self.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def snapshot(self) -> CpuSnapshot:
        pids = {p for root in self.worker_pids for p in tree_rss(root)}
        return CpuSnapshot(cpu_seconds(pids), cpu_seconds(self.backends()), self.redis_seconds(), machine_ticks())

    @staticmethod
    def delta(before: CpuSnapshot, after: CpuSnapshot) -> CpuDelta:
        """What was spent between two snapshots; new processes count in full."""
        workers, db = (sum(v - b.get(pid, 0.0) for pid, v in a.items())
                       for b, a in ((before.workers, after.workers), (before.db, after.db)))
        busy, total = (a - b for a, b in zip(after.machine, before.machine))
        return CpuDelta(workers, db, after.redis - before.redis, busy / total if total else 0.0)


@dataclass(frozen=True)
class CpuSnapshot:
    workers: dict[int, float]
    db: dict[int, float]
    redis: float
    machine: tuple[int, int]
    """(busy, total) jiffies of all cores since boot."""


@dataclass(frozen=True)
class CpuDelta:
    workers: float
    db: float
    redis: float
    busy: float
    """The share of all cores' time that was busy (anything on the machine, not only the bench)."""


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores from /proc/stat (idle and iowait are not busy); (0, 0) elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


class RssSampler(threading.Thread):
    """Samples the worker tree's total RSS every `interval` seconds; `peak` since the last reset."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._halt = threading.Event()  # not `_stop`: threading.Thread has a method of that name

    def sample(self) -> int:
        total = sum(tree_rss(self.pid).values())
        self.peak = max(self.peak, total)
        return total

    def reset(self) -> None:
        self.peak = 0
        self.sample()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._halt.set()


# ------------------------------------------------------------------ driver


@dataclass
class Config:
    """One configuration: how to start run number i (returns its key) and which runs finished."""

    name: str
    label: str
    start: Callable[[str, int], str]
    finished: Callable[[list[str]], dict[str, bool]]
    """keys -> {key: reached the expected terminal state}, for the runs that finished"""
    cleanup: Callable[[], None] = lambda: None


@dataclass
class Phase:
    config: str
    n: int
    elapsed: float
    latencies: list[float]
    """Seconds from enqueue to terminal, one per run."""
    errors: int
    keys: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    peak_rss: int = 0
    worker_cpu: float = 0.0
    """CPU seconds of the worker tree (main process and pool children) during the phase."""
    db_cpu: float = 0.0
    """CPU seconds of the PostgreSQL backends connected to the bench's database (not the driver's)."""
    redis_cpu: float = 0.0
    """CPU seconds of the Redis server (all of it) during the phase."""
    busy: float = 0.0
    """The share of the machine's cores busy during the phase (anything running, 1.0: all)."""

    @property
    def throughput(self) -> float:
        return self.n / self.elapsed if self.elapsed > 0 else 0.0


def drive(cfg: Config, n: int, *, window: int, poll: float = 0.005, tag: str = "",
          stall_timeout: float = 60.0) -> Phase:
    """Run `n` runs of `cfg` with at most `window` in flight; returns their timings."""
    started: dict[str, float] = {}
    inflight: list[str] = []
    latencies: list[float] = []
    first = last = 0.0
    errors = i = 0
    progress = time.monotonic()
    while len(latencies) < n:
        while i < n and len(inflight) < window:
            t0 = time.time()
            key = cfg.start(tag, i)
            started[key] = t0
            inflight.append(key)
            first = first or t0
            i += 1
        time.sleep(poll)
        done = cfg.finished(inflight)
        finish = time.time()
        if done:
            progress = time.monotonic()
            for key, ok in done.items():
                latencies.append(max(0.0, finish - started[key]))
                last = max(last, finish)
                errors += not ok
            inflight = [k for k in inflight if k not in done]
        elif time.monotonic() - progress > stall_timeout:
            raise RuntimeError(f"{cfg.name}: no run finished for {stall_timeout:.0f}s "
                               f"({len(latencies)}/{n} done, {len(inflight)} in flight)")
    cfg.cleanup()
    return Phase(cfg.name, n, last - first, latencies, errors, keys=list(started))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]
