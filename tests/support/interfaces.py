"""Helpers the tests share: fresh ids, counting runs, polling, stopping a server, a FAILED saga."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func, select

from workflows import get_runtime, start_saga, wait_for
from workflows.store.models import SagaRow

T = TypeVar("T")


def new_id(prefix: str = "if") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def saga_count() -> int:
    """Rows in the sagas table: what a refused request must leave unchanged."""
    with get_runtime().store.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(SagaRow)) or 0)


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy, and return that; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached after {timeout}s")


def stop_process_group(proc: subprocess.Popen, grace: float = 15.0) -> None:  # type: ignore[type-arg]
    """Stop a server started with `start_new_session=True` and its children: SIGTERM, then SIGKILL
    if it has not exited within `grace` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def failed_saga(redis_client: Any) -> str:
    """A tests.three saga whose compensation of `a` ran out of retries: FAILED, one open dead letter.

    The compensation fails while the Redis key switch:<saga id>:a exists; delete it to "fix the cause".
    """
    saga_id = new_id("failed")
    redis_client.set(f"switch:{saga_id}:a", 1)
    data = {"behaviour": {"c": {"fail": "permanent"}}, "compensation_behaviour": {"a": {"switch": True}}}
    assert wait_for(start_saga("tests.three", data, saga_id=saga_id), timeout=30).state == "FAILED"
    return saga_id
