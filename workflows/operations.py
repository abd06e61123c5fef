"""Operator actions on a saga: cancel, resume a stuck compensation, retry a step now.

Each is one version-checked transition recorded in the saga's history with who and why.
"""
from __future__ import annotations

from .definition import registry
from .engine import Cancel, Resume
from .errors import InvalidOperation, StepNotFound
from .orchestrator import apply_and_publish
from .dead_letters import close_resumed_dead_letters
from .runtime import get_runtime
from .views import SagaView


def cancel(saga_id: str, *, reason: str, who: str = "operator") -> SagaView:
    """Force compensation of a RUNNING saga."""
    return _act(saga_id, Cancel(reason or "cancelled", who=who), who)


def resume(saga_id: str, *, reason: str = "", who: str = "operator") -> SagaView:
    """Resume the compensation of a FAILED saga after the cause was fixed."""
    rt = get_runtime()
    if rt.store.load(saga_id).status.value != "FAILED":
        raise InvalidOperation(f"saga {saga_id} is not FAILED: only a stuck compensation can be resumed")
    return _act(saga_id, Resume(None, reason, who), who)


def retry_step(saga_id: str, step: str | None = None, *, reason: str = "", who: str = "operator") -> SagaView:
    """Dispatch a step again now: a stuck compensation of a FAILED saga, or an in-flight step
    (skipping the rest of its backoff). The old message, if it still arrives, is stale."""
    if step is not None:
        steps = [s.name for s in get_runtime().store.load(saga_id).steps]
        if step not in steps:
            raise StepNotFound(f"saga {saga_id} has no step {step!r}; its steps are {', '.join(steps)}")
    return _act(saga_id, Resume(step, reason, who), who)


def _act(saga_id: str, outcome: Cancel | Resume, who: str) -> SagaView:
    rt = get_runtime()
    run = rt.store.load(saga_id)
    applied = apply_and_publish(rt, registry.get(run.saga_type), saga_id, outcome, by=f"operator:{who}",
                                before_commit=close_resumed_dead_letters(rt, f"resumed by {who}"))
    if applied.transition is None:
        raise InvalidOperation(f"saga {saga_id}: {applied.ignored}")
    return rt.store.get(saga_id)
