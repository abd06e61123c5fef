"""What the example services share: their database session and injected faults."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
import random
from datetime import datetime, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from workflows import PermanentError, get_runtime
from workflows.store.db import session_factory

from .models import Fault

SERVICES = ("inventory", "payment", "shipping", "notification")


class TransientServiceError(Exception):
    """A failure that may go away (a timeout, a 503): retried by the default policy."""


def now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def transaction() -> Iterator[Session]:
    factory = session_factory(get_runtime().settings.resolved_database_url())
    with factory.begin() as s:
        yield s


def already_done(model: Any, idempotency_key: str) -> Any:
    """The row an earlier call with this idempotency key made, if any.

    Actions look first: a repeated call (a redelivery after the worker died between the
    service's commit and the saga's) replays its effect before anything can fail, like an
    idempotent API replays its first response. Failing it instead would leave the step FAILED,
    never compensated, with its effect standing.
    """
    with transaction() as s:
        return s.scalars(select(model).where(model.idempotency_key == idempotency_key)).first()


OPERATIONS = ("action", "compensation", "any", "after_action")
"""Where an armed fault strikes: before an action's effect, before a compensation's, before either,
or after an action's effect committed (a gateway that errors having taken the money)."""


def check_fault(service: str, operation: str) -> None:
    """Raise the armed failure of `service`, if any, consuming one of its remaining calls.

    Consumed in its own committed statement so a failure is counted even though the caller's
    transaction rolls back. "after_action" is checked once the action's effect committed, and only
    a fault armed for it strikes there ("any" strikes before the effect).
    """
    strikes = [operation] if operation == "after_action" else [operation, "any"]
    factory = session_factory(get_runtime().settings.resolved_database_url())
    with factory.begin() as fs:
        row = fs.execute(update(Fault).where(Fault.service == service, Fault.remaining > 0,
                                             Fault.operation.in_(strikes))
                         .values(remaining=Fault.remaining - 1)
                         .returning(Fault.permanent, Fault.message, Fault.rate)).first()
    if row is None:
        return
    permanent, message, rate = row
    if rate < 1.0 and random.random() >= rate:
        return
    if permanent:
        raise PermanentError(f"{service}: {message}")
    raise TransientServiceError(f"{service}: {message}")


def arm_fault(service: str, times: int = 1, *, permanent: bool = True, message: str = "injected failure",
              operation: str = "action", rate: float = 1.0) -> None:
    """Make the next `times` calls of `service` fail. `operation`: action, compensation or any
    (before the effect), or after_action (the action's effect is done, then it fails).

    With `rate` < 1 each of those calls fails only with that probability (chaos testing)."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {', '.join(map(repr, OPERATIONS))} (got {operation!r})")
    if times < 0:
        raise ValueError("times must be >= 0")
    if not 0.0 < rate <= 1.0:
        raise ValueError("rate must be in (0, 1]")
    with transaction() as s:
        s.execute(delete(Fault).where(Fault.service == service))
        s.add(Fault(service=service, remaining=times, permanent=permanent, message=message, operation=operation,
                    rate=rate))


def clear_faults() -> None:
    with transaction() as s:
        s.execute(delete(Fault))


def effects_of(saga_id: str) -> dict[str, list[str]]:
    """The statuses a saga left in each service's table (demo output, tests, invariant checks)."""
    from .models import Notification, Payment, Reservation, Shipment

    with transaction() as s:
        return {
            "reservation": list(s.scalars(select(Reservation.status).where(Reservation.saga_id == saga_id))),
            "payment": list(s.scalars(select(Payment.status).where(Payment.saga_id == saga_id))),
            "shipment": list(s.scalars(select(Shipment.status).where(Shipment.saga_id == saga_id))),
            "notification": list(s.scalars(select(Notification.kind).where(Notification.saga_id == saga_id))),
        }
