"""The dead-letter queue: tasks whose retries ran out, kept for an operator.

Each dead letter is a row in `dead_letters` (the record: message, exception, traceback) and a
copy in the broker queue `dead_letter` (for tools that watch queues). Operations work on the
rows: list, show, redrive (once: the row moves from OPEN to REDRIVEN in the same transaction
that decides what the redrive does), discard (with a reason).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from workflows.core.definition import registry
from workflows.core.engine import Resume, StepStatus
from workflows.store.models import DeadLetterRow, EventRow
from workflows.store.sql import utcnow
from workflows.core.errors import InvalidOperation
from workflows.runtime.container import Runtime, get_runtime
from workflows.core.views import DeadLetterView

Redriver = Callable[[Runtime, DeadLetterView, str, str], None]
redrivers: dict[str, Redriver] = {}
"""How to redrive a dead letter of each kind; the choreography registers 'event'."""


def list_dead_letters(status: str | None = "OPEN", saga_id: str | None = None, limit: int = 100) -> list[DeadLetterView]:
    return get_runtime().store.dead_letters(status=status, saga_id=saga_id, limit=limit)


def get_dead_letter(dl_id: str) -> DeadLetterView:
    return get_runtime().store.dead_letter(dl_id)


def redrive(dl_id: str, *, who: str = "operator", reason: str = "") -> DeadLetterView:
    """Publish the dead letter's work again, once. A second redrive raises `InvalidOperation`."""
    rt = get_runtime()
    dl = rt.store.dead_letter(dl_id)
    if dl.status != "OPEN":
        raise InvalidOperation(f"dead letter {dl_id} is {dl.status}, not OPEN: it was handled already")
    redriver = redrivers.get(dl.kind)
    if redriver is None:
        raise InvalidOperation(f"dead letters of kind {dl.kind!r} cannot be redriven")
    redriver(rt, dl, who, reason)
    return rt.store.dead_letter(dl_id)


def discard(dl_id: str, *, who: str = "operator", reason: str) -> DeadLetterView:
    if not reason:
        raise InvalidOperation("discarding a dead letter needs a reason")
    rt = get_runtime()
    dl = rt.store.dead_letter(dl_id)
    with rt.store.sessions.begin() as s:  # the resolution and its history row, together
        if not rt.store.resolve_dead_letter(s, dl_id, "DISCARDED", f"discarded by {who}: {reason}"):
            raise InvalidOperation(f"dead letter {dl_id} is {dl.status}, not OPEN: it was handled already")
        if dl.saga_id:
            s.add(EventRow(saga_id=dl.saga_id, at=utcnow(), type="DeadLetterDiscarded", step=dl.step,
                           detail={"dead_letter": dl_id, "who": who, "reason": reason}))
    return rt.store.dead_letter(dl_id)


def _claim(rt: Runtime, dl: DeadLetterView, who: str, reason: str) -> Callable[[Session, object, object], None]:
    """A before-commit hook that moves the dead letter to REDRIVEN, or aborts the transition."""

    def hook(s: Session, t: object, dl_id: object) -> None:
        resolution = f"redriven by {who}: {reason}".strip(": ")
        if not rt.store.resolve_dead_letter(s, dl.id, "REDRIVEN", resolution):
            raise InvalidOperation(f"dead letter {dl.id} was handled already")
        close_resumed_dead_letters(rt, resolution)(s, t, dl_id)  # older ones of the same step, if any

    return hook


def close_resumed_dead_letters(rt: Runtime, resolution: str) -> Callable[[Session, Any, Any], None]:
    """A before-commit hook: the OPEN compensation dead letters of each step this transition
    takes out of COMPENSATION_FAILED are resolved (REDRIVEN) in the same transaction."""

    def hook(s: Session, t: Any, _dl: Any) -> None:
        for old, new in zip(t.before.steps, t.after.steps):
            if old.status == StepStatus.COMPENSATION_FAILED and new.status == StepStatus.COMPENSATING:
                s.execute(update(DeadLetterRow).where(
                    DeadLetterRow.saga_id == t.after.saga_id, DeadLetterRow.step == new.name,
                    DeadLetterRow.kind == "compensation", DeadLetterRow.status == "OPEN")
                    .values(status="REDRIVEN", resolution=resolution, resolved_at=utcnow()))

    return hook


def _redrive_compensation(rt: Runtime, dl: DeadLetterView, who: str, reason: str) -> None:
    from workflows.orchestration.step_task import apply_and_publish

    assert dl.saga_id and dl.step
    run = rt.store.load(dl.saga_id)
    applied = apply_and_publish(rt, registry.get(run.saga_type), dl.saga_id,
                                Resume(dl.step, reason or f"redrive of dead letter {dl.id}", who),
                                by=f"operator:{who}", before_commit=_claim(rt, dl, who, reason), state=run)
    if applied.transition is None:
        raise InvalidOperation(f"cannot redrive: {applied.ignored}")


def _redrive_action(rt: Runtime, dl: DeadLetterView, who: str, reason: str) -> None:
    run = rt.store.load(dl.saga_id or "")
    raise InvalidOperation(
        f"the action of step {dl.step!r} ran out of retries and saga {dl.saga_id} went on to compensate "
        f"(it is {run.status.value}); there is nothing to redrive: discard this dead letter, or start "
        "a new saga")


redrivers["compensation"] = _redrive_compensation
redrivers["action"] = _redrive_action
