"""Helpers the tests share: fresh ids, counting runs, polling, a FAILED saga."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func, select

from workflows import get_runtime, start_saga, wait_for
from workflows.models import SagaRow

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


def failed_saga(redis_client: Any) -> str:
    """A tests.three saga whose compensation of `a` ran out of retries: FAILED, one open dead letter.

    The compensation fails while the Redis key switch:<saga id>:a exists; delete it to "fix the cause".
    """
    saga_id = new_id("failed")
    redis_client.set(f"switch:{saga_id}:a", 1)
    data = {"behaviour": {"c": {"fail": "permanent"}}, "compensation_behaviour": {"a": {"switch": True}}}
    assert wait_for(start_saga("tests.three", data, saga_id=saga_id), timeout=30).state == "FAILED"
    return saga_id
