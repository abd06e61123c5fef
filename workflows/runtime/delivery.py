"""How every saga task is delivered: late acks, requeue on a lost worker, retry on an outage.

Shared by the step tasks (`orchestration`) and the event consumers (`choreography`).
"""
from __future__ import annotations

from typing import Any

import kombu.exceptions
import sqlalchemy.exc

INFRASTRUCTURE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                         kombu.exceptions.OperationalError)
"""The database or broker was unreachable: the step's own outcome is not in question."""

DELIVERY_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "max_retries": None,
    # An outage of the database or broker retries the whole message (Celery's autoretry, with
    # backoff): its effects are idempotent and its transition is version-checked. Errors of the
    # step function itself never reach this: the saga's RetryPolicy handles them in the step task.
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
}
