"""The bodies the built-in projections derive from a committed transition. Pure.

`saga_event`: the `saga-events` record (docs: Kafka and Redis, the schema); `saga_hash`: the Redis
read model's fields of the run (`HGETALL saga:<id>`), also written from the database by
`sagas redis-rebuild` (`hash_of`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from workflows.core.run import RunState, StepStatus
from workflows.core.transition import Transition

EVENT_SCHEMA = "saga-event/1"
_IN_FLIGHT = (StepStatus.RUNNING, StepStatus.WAITING, StepStatus.COMPENSATING)


def saga_event(t: Transition, now: datetime) -> dict[str, Any]:
    """One `saga-events` record per transition: what happened (`event`, `step`: its first history
    event), the run after it, and `event_id` (`<saga id>:<run version>`) to drop a resend by."""
    run = t.after
    first = t.events[0] if t.events else None
    return {"schema": EVENT_SCHEMA, "event_id": f"{run.saga_id}:{run.version}", "saga_id": run.saga_id,
            "saga_type": run.saga_type, "saga_version": run.saga_version, "run_version": run.version,
            "event": first.type if first is not None else "Transition",
            "step": first.step if first is not None else current_step(run),
            "state": run.status.value, "time": now.isoformat(), "parent_id": run.parent_id,
            "events": [{"type": e.type, "step": e.step, "attempt": e.attempt} for e in t.events]}


def saga_hash(t: Transition, now: datetime) -> dict[str, Any]:
    return hash_of(t.after, now)


def hash_of(run: RunState, updated_at: datetime) -> dict[str, Any]:
    """The read model's fields of `run` (all strings: a Redis hash)."""
    return {"state": run.status.value, "type": run.saga_type, "version": str(run.saga_version),
            "run_version": str(run.version), "step": current_step(run) or "", "updated_at": updated_at.isoformat(),
            "error": last_error(run) or "", "terminal": "1" if run.status.terminal else "0"}


def current_step(run: RunState) -> str | None:
    """The step the run is at: the one in flight (the newest compensating one while compensating),
    else the first not started, else the last."""
    moving = [s for s in run.steps if s.status in _IN_FLIGHT]
    if moving:
        return moving[-1].name if run.status.value == "COMPENSATING" else moving[0].name
    pending = [s for s in run.steps if s.status == StepStatus.PENDING]
    if pending and run.status.value in ("RUNNING", "SCHEDULED"):
        return pending[0].name
    return run.steps[-1].name if run.steps else None


def last_error(run: RunState) -> str | None:
    """The run's failure reason, else the newest error a step recorded."""
    if run.failure_reason:
        return run.failure_reason
    errors = [s.error for s in run.steps if s.error]
    return errors[-1] if errors else None
