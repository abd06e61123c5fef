"""The dead-letter queue: tasks whose retries ran out, kept for an operator.

Each dead letter is a row in `dead_letters` (the record: message, exception, traceback) and a
copy in the broker queue `dead_letter` (for tools that watch queues), published after the row
committed and marked sent. Operations work on the rows: list, show, redrive (once: the row moves
from OPEN to REDRIVEN in the same write as the transition the redrive causes), discard (with a
reason).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from workflows.choreography.operations import redrive_event
from workflows.core.definition import definition_of
from workflows.core.errors import InvalidOperation
from workflows.core.state import DeadLetterClosure, HistoryEvent, Resume, Side
from workflows.core.views import DeadLetterView
from workflows.runtime.container import Runtime, get_runtime


def list_dead_letters(status: str | None = "OPEN", saga_id: str | None = None,
                      limit: int = 100) -> list[DeadLetterView]:
    return get_runtime().store.dead_letters(status=status, saga_id=saga_id, limit=limit)


def get_dead_letter(dl_id: str) -> DeadLetterView:
    return get_runtime().store.dead_letter(dl_id)


def redrive(dl_id: str, *, who: str = "operator", reason: str = "") -> DeadLetterView:
    """Publish the dead letter's work again, once. A second redrive raises `InvalidOperation`."""
    rt = get_runtime()
    dl = rt.store.dead_letter(dl_id)
    try:
        if dl.status != "OPEN":
            raise InvalidOperation(f"dead letter {dl_id} is {dl.status}, not OPEN: it was handled already")
        if dl.kind == Side.COMPENSATION:
            _redrive_compensation(rt, dl, who, reason)
        elif dl.kind == "event":
            redrive_event(rt, dl, who, reason)
        elif dl.kind == Side.ACTION:
            _refuse_action(rt, dl)
        else:
            raise InvalidOperation(f"dead letters of kind {dl.kind!r} cannot be redriven")
    except InvalidOperation as e:
        _note_refusal(rt, dl, "redrive", who, reason, str(e))
        raise
    return rt.store.dead_letter(dl_id)


@dataclass(frozen=True)
class BulkRedrive:
    """What `redrive_all` did: each dead letter redriven, and each one refused with the reason."""

    saga_type: str
    step: str
    redriven: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def redrive_all(saga_type: str, step: str, *, who: str = "operator", reason: str = "") -> BulkRedrive:
    """Redrive every OPEN dead letter of step `step` of the runs of `saga_type`, oldest first.

    Each is its own `redrive` (one version-checked transition per saga): one that is refused (it
    cannot be redriven, or another operator handled it meanwhile) is reported and recorded, and
    the others go on."""
    if not saga_type or not step:
        raise InvalidOperation("a bulk redrive names a saga type and a step")
    result = BulkRedrive(saga_type, step)
    for dl in get_runtime().store.open_dead_letters_of(saga_type, step):
        try:
            redrive(dl.id, who=who, reason=reason)
        except InvalidOperation as e:
            result.refused[dl.id] = str(e)
        else:
            result.redriven.append(dl.id)
    return result


def discard(dl_id: str, *, who: str = "operator", reason: str) -> DeadLetterView:
    if not reason:
        raise InvalidOperation("discarding a dead letter needs a reason")
    rt = get_runtime()
    dl = rt.store.dead_letter(dl_id)
    event = HistoryEvent("DeadLetterDiscarded", dl.step, None, {"dead_letter": dl_id, "who": who, "reason": reason})
    if not rt.store.discard_dead_letter(dl_id, resolution=f"discarded by {who}: {reason}", event=event,
                                        now=rt.clock()):
        why = f"dead letter {dl_id} is {rt.store.dead_letter(dl_id).status}, not OPEN: it was handled already"
        _note_refusal(rt, dl, "discard", who, reason, why)
        raise InvalidOperation(why)
    return rt.store.dead_letter(dl_id)


def _note_refusal(rt: Runtime, dl: DeadLetterView, action: str, who: str, reason: str, why: str) -> None:
    """A refused redrive or discard is on the saga's record (who tried what, and why it was refused)."""
    if dl.saga_id:
        rt.store.record(dl.saga_id, HistoryEvent("OperatorActionRefused", dl.step, None, {
            "action": action, "dead_letter": dl.id, "who": who, "reason": reason, "refused": why}),
            by=f"operator:{who}", now=rt.clock())


def _redrive_compensation(rt: Runtime, dl: DeadLetterView, who: str, reason: str) -> None:
    assert dl.saga_id and dl.step
    run = rt.store.load(dl.saga_id)
    claim = DeadLetterClosure("REDRIVEN", f"redriven by {who}: {reason}".strip(": "), dead_letter_id=dl.id)
    applied = rt.loop.apply(definition_of(run), dl.saga_id,
                            Resume(dl.step, reason or f"redrive of dead letter {dl.id}", who),
                            by=f"operator:{who}", state=run, closures=(claim,))
    if applied.transition is None:
        raise InvalidOperation(f"cannot redrive: {applied.ignored}")


def _refuse_action(rt: Runtime, dl: DeadLetterView) -> None:
    run = rt.store.load(dl.saga_id or "")
    raise InvalidOperation(
        f"the action of step {dl.step!r} ran out of retries and saga {dl.saga_id} went on to compensate "
        f"(it is {run.status.value}); there is nothing to redrive: discard this dead letter, or start "
        "a new saga")
