"""What `workflows.install` puts on the suite's worker app (tests/servers/conftest.py's `app`), and a real
worker on Redis that refuses to start when its visibility timeout is below a step's limit. The pure
parts: tests/pure/test_timer_heap.py, tests/pure/test_visibility.py.
"""
from __future__ import annotations

import re
import subprocess
import sys

from tests.support.workers import ROOT, worker_env
from workflows.runtime.timer_heap import CompactTimerHeap


def test_the_step_is_installed_on_the_worker(app) -> None:  # type: ignore[no-untyped-def]
    assert CompactTimerHeap in app.steps["worker"]


def test_a_worker_on_redis_with_a_visibility_timeout_below_a_step_limit_refuses_to_start(app) -> None:  # type: ignore[no-untyped-def]
    # The shop's order_fulfillment: its compensations may wait 256 s (the default compensation
    # policy) and run 30 s (+ 5 s): 291 s. With a timeout of 10 s the worker does not start.
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "solo", "-Q", "vis"],
                          cwd=ROOT, env=worker_env(SAGA_REDIS_VISIBILITY_TIMEOUT="10"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "VisibilityTimeoutTooShort" in done.stderr or "visibility timeout of 10s" in done.stderr, done.stderr[-2000:]
    # the first example saga that does not fit is named (they share the shop's steps and policies)
    assert re.search(r"saga '(order_[a-z_]+)', step '[a-z_]+'", done.stderr), done.stderr[-2000:]
    assert "291s" in done.stderr and "10s" in done.stderr
