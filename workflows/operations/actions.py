"""Operator actions on a saga: cancel, resume a stuck compensation, retry a step now.

Each is one pass of the decision loop (a version-checked transition) recorded in the saga's
history with who and why; a resume also resolves the stuck compensation's dead letters, in the
same write. An action that is refused is on the record too (`OperatorActionRefused`: who, what,
why it was asked for, why it was refused), so the audit trail has every attempt.
"""
from __future__ import annotations

from workflows.core.definition import definition_of
from workflows.core.errors import InvalidOperation, SagaError, StepNotFound
from workflows.core.state import Cancel, HistoryEvent, Resume, RunState, RunStatus
from workflows.core.views import SagaView
from workflows.runtime.container import get_runtime


def cancel(saga_id: str, *, reason: str, who: str = "operator") -> SagaView:
    """Force compensation of a RUNNING saga."""
    return _act(get_runtime().store.load(saga_id), Cancel(reason or "cancelled", who=who), who, "cancel", reason)


def resume(saga_id: str, *, reason: str = "", who: str = "operator") -> SagaView:
    """Resume the compensation of a FAILED saga after the cause was fixed."""
    run = get_runtime().store.load(saga_id)
    if run.status != RunStatus.FAILED:
        raise refused(saga_id, "resume", who, reason, None,
                      f"saga {saga_id} is not FAILED: only a stuck compensation can be resumed")
    # Only on this FAILED version: had another resume or a redrive moved it on meanwhile,
    # re-deciding `Resume` on the COMPENSATING run would send its compensation a second time.
    return _act(run, Resume(None, reason, who), who, "resume", reason, expected_version=run.version)


def retry_step(saga_id: str, step: str | None = None, *, reason: str = "", who: str = "operator") -> SagaView:
    """Dispatch a step again now: a stuck compensation of a FAILED saga, or an in-flight step
    (skipping the rest of its backoff). The old message, if it still arrives, is stale."""
    run = get_runtime().store.load(saga_id)
    if step is not None and step not in (names := [s.name for s in run.steps]):
        raise refused(saga_id, "retry", who, reason, step,
                      f"saga {saga_id} has no step {step!r}; its steps are {', '.join(names)}", StepNotFound)
    return _act(run, Resume(step, reason, who), who, "retry", reason, step=step)


def refused(saga_id: str, action: str, who: str, reason: str, step: str | None, why: str,
            error: type[SagaError] = InvalidOperation) -> SagaError:
    """Record in the saga's history that `who` asked for `action` and was refused (`why`); returns
    the error to raise."""
    rt = get_runtime()
    rt.store.record(saga_id, HistoryEvent("OperatorActionRefused", step, None, {
        "action": action, "who": who, "reason": reason, "refused": why}), by=f"operator:{who}", now=rt.clock())
    return error(why)


def _act(run: RunState, outcome: Cancel | Resume, who: str, action: str, reason: str, *,
         expected_version: int | None = None, step: str | None = None) -> SagaView:
    rt = get_runtime()
    applied = rt.loop.apply(definition_of(run), run.saga_id, outcome, by=f"operator:{who}",
                            expected_version=expected_version, state=run)
    if applied.stale:
        raise refused(run.saga_id, action, who, reason, step,
                      f"saga {run.saga_id} changed while the action was being decided; look at it again")
    if applied.transition is None:
        raise refused(run.saga_id, action, who, reason, step, f"saga {run.saga_id}: {applied.ignored}")
    return rt.store.get(run.saga_id)
