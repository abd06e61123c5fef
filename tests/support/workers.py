"""Celery worker subprocesses for the server tests: `celery -A worker worker` with the test settings.

The settings come from the environment tests/servers/conftest.py sets up (TEST_* → SAGA_*); a
worker gets the repository root on its PYTHONPATH so it imports `worker` and `tests.support.sagas`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: where `celery -A worker` runs."""


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


class WorkerProcess:
    """`celery -A worker worker` in a subprocess, stopped (or killed) by the test."""

    def __init__(self, name: str, queues: str, concurrency: int = 2, env: dict[str, str] | None = None,
                 log: Path | None = None, loglevel: str = "WARNING", args: tuple[str, ...] = ()) -> None:
        self.name = name
        self.log = log or Path(f"/tmp/saga-test-worker-{name}-{os.getpid()}.log")
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", str(concurrency),
               "-Q", queues, "-n", f"{name}@%h", f"--loglevel={loglevel}", "--without-gossip", "--without-mingle",
               *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env or worker_env(), stdout=self.log.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, app, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited: {self.log.read_text()[-2000:]}")
            replies = app.control.ping(destination=[f"{self.name}@{os.uname().nodename}"], timeout=0.5)
            if replies:
                return
        raise RuntimeError(f"worker {self.name} not ready: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        from tests.support.interfaces import stop_process_group

        stop_process_group(self.proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
