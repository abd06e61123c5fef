"""The rows a transition writes, as column values: shared by every store implementation. Pure."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, update

from workflows.core.run import Side
from workflows.core.state import DeadLetter, HistoryEvent, Signal, StepState, StepStatus, Transition
from workflows.store.records import input_hash
from workflows.store.models import EventRow, SagaRow, StepRow

SAGAS, STEPS, EVENTS = SagaRow.__table__, StepRow.__table__, EventRow.__table__


def step_values(saga_id: str, st: StepState, old: StepState | None, now: datetime, key: str = "") -> dict[str, Any]:
    """The columns of step `st` (an INSERT's with `old` None; an UPDATE's, keyed `b_`, otherwise)."""
    values: dict[str, Any] = {
        f"{key}saga_id": saga_id, f"{key}index": st.index, "status": st.status.value, "attempts": st.attempts,
        "compensation_attempts": st.compensation_attempts, "result": st.result, "error": st.error,
        "task_id": st.task_id, "eta": st.eta, "deadline_at": st.deadline_at, "finished_at": st.finished_at}
    if old is None:
        values["name"] = st.name
        values["started_at"] = None if st.status == StepStatus.PENDING else now
        values["compensated_at"] = None
        return values
    if old.status == StepStatus.PENDING and st.status != StepStatus.PENDING:
        values["started_at"] = now
    if st.status == StepStatus.COMPENSATED and old.status != st.status:
        values["compensated_at"] = now
    return values


STEP_COLUMNS = ("status", "attempts", "compensation_attempts", "result", "error", "task_id", "eta", "deadline_at",
                 "finished_at", "started_at", "compensated_at")
EVENT_COLUMNS = ("at", "type", "step", "attempt", "detail")


def _redelivery_shape(kind: str, first: bool) -> Any:
    action = Side(kind) is Side.ACTION
    count = STEPS.c.redeliveries if action else STEPS.c.compensation_redeliveries
    attempts = STEPS.c.attempts if action else STEPS.c.compensation_attempts
    in_flight = StepStatus.RUNNING if action else StepStatus.COMPENSATING
    q = update(STEPS).where(STEPS.c.saga_id == bindparam("r_saga_id"), STEPS.c.name == bindparam("r_step"),
                            STEPS.c.task_id == bindparam("r_task_id"), STEPS.c.status == in_flight.value,
                            attempts == bindparam("r_done"))
    if first:
        q = q.where(count == 0)
    return q.values({count.key: count + 1}).returning(count)


_REDELIVERY = {(kind, first): _redelivery_shape(kind, first) for kind in ("action", "compensation")
               for first in (False, True)}


def redelivery_update(saga_id: str, step: str, kind: str, task_id: str, attempt: int,
                      first: bool = False) -> tuple[Any, dict[str, Any]]:
    """`UPDATE saga_steps SET redeliveries = redeliveries + 1 WHERE <that message is the one in flight>
    RETURNING redeliveries` (the compensation's counter for `kind` 'compensation') and its parameters;
    `first`: only while the counter is 0."""
    if kind not in ("action", "compensation"):
        raise ValueError(f"kind must be 'action' or 'compensation', not {kind!r}")
    return _REDELIVERY[kind, first], {"r_saga_id": saga_id, "r_step": step, "r_task_id": task_id, "r_done": attempt - 1}


def redelivery_event(saga_id: str, step: str, kind: str, task_id: str, attempt: int, count: int, by: str,
                     now: datetime) -> dict[str, Any]:
    """The `StepRedelivered` history row of the `count`-th redelivery of a step's message."""
    return {"saga_id": saga_id, "at": now, "type": "StepRedelivered", "step": step, "attempt": attempt,
            "detail": {"kind": kind, "task_id": task_id, "redeliveries": count, "by": by}}


def event_values(saga_id: str, events: tuple[HistoryEvent, ...], by: str, now: datetime) -> list[dict[str, Any]]:
    return [{"saga_id": saga_id, "at": now, "type": e.type, "step": e.step, "attempt": e.attempt,
             "detail": {**e.detail, "by": by}} for e in events]


def creation_rows(t: Transition, *, idempotency_key: str | None, by: str,
                  now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The run, step and history rows of a new run whose first transition (`Started`) is `t`."""
    run = t.after
    saga_row = {"id": run.saga_id, "saga_type": run.saga_type, "style": "orchestrated", "state": run.status.value,
                "version": run.version, "saga_version": run.saga_version, "input": run.input,
                "input_hash": input_hash(run.saga_type, run.input),
                "idempotency_key": idempotency_key, "caused_by": by, "created_at": now, "updated_at": now,
                "deadline_at": run.deadline_at, "signals_pending": len(run.signals), "parent_id": run.parent_id,
                "parent_step": run.parent_step}
    if run.trace is not None:  # with tracing on: the run's first trace segment
        saga_row["trace_context"] = run.trace
    steps = [step_values(run.saga_id, st, None, now) for st in run.steps]
    created: dict[str, Any] = {"saga_type": run.saga_type, "saga_version": run.saga_version,
                               "idempotency_key": idempotency_key}
    if run.parent_id is not None:
        created.update(parent_id=run.parent_id, parent_step=run.parent_step)
    events = [{"saga_id": run.saga_id, "at": now, "type": "SagaCreated", "step": None, "attempt": None,
               "detail": created},
              *event_values(run.saga_id, t.events, by, now)]
    return saga_row, steps, events


def child_creations(t: Transition, now: datetime) -> list[tuple[dict[str, Any], list[dict[str, Any]],
                                                               list[dict[str, Any]]]]:
    """The creation rows of every child run `t` starts, and of theirs, parents first."""
    out = []
    for child in t.children:
        out.append(creation_rows(child, idempotency_key=None, by=child.after.caused_by or "", now=now))
        out += child_creations(child, now)
    return out


def dead_letter_values(dl: DeadLetter, saga_id: str | None, now: datetime) -> dict[str, Any]:
    message = dl.message_or_default(saga_id)
    return {"id": dl.id, "saga_id": saga_id, "step": dl.step, "kind": dl.kind, "task_name": dl.task,
            "queue": message.queue, "args": message.args, "kwargs": message.kwargs, "headers": message.headers,
            "attempts": dl.attempts, "exception": str(dl.error), "traceback": dl.error.traceback, "status": "OPEN",
            "resolution": None, "created_at": now, "resolved_at": None, "sent_at": None}


def signal_values(saga_id: str, x: Signal, now: datetime) -> dict[str, Any]:
    return {"id": x.id, "saga_id": saga_id, "name": x.name, "payload": x.payload, "idempotency_key": x.idempotency_key,
            "who": x.who, "received_at": x.received_at, "consumed_by": x.consumed_by,
            "consumed_at": now if x.consumed_by is not None else None}
