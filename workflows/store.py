"""The saga store: runs, steps, history and dead letters behind one small interface.

Every transition is one transaction: lock the run row, check the version the message
expects, let the engine decide, write the changed rows and the history, commit. The same code
runs on PostgreSQL (row lock) and SQLite (`BEGIN IMMEDIATE`); the `version` column is checked
on every UPDATE as well, so a stale writer fails instead of overwriting.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from .db import get_engine, session_factory
from .definition import Saga
from .engine import (Ignored, Outcome, RunState, RunStatus, StepState, StepStatus, Timing, Transition,
                     decide)
from .errors import DeadLetterNotFound, IdempotencyConflict, SagaError, SagaNotFound
from .models import DeadLetterRow, EventRow, SagaRow, StepRow
from .views import DeadLetterView, EventView, SagaView, StepView


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def input_hash(saga_type: str, data: dict[str, Any]) -> str:
    blob = json.dumps([saga_type, data], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class SagaIdTaken(SagaError):
    """`start_saga(saga_id=...)` named an id that is already used."""


class ConcurrentTransition(Exception):
    """Another writer changed the run between our read and our write (caught by the version)."""


@dataclass(frozen=True)
class MessageInfo:
    """What a dead letter keeps of the message that ran out of retries."""

    task_name: str
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]


@dataclass(frozen=True)
class Applied:
    """The result of `SagaStore.apply`: a transition, or why there was none."""

    transition: Transition | None
    state: RunState
    stale: bool = False
    """The message expected another version of the run."""
    own_commit: bool = False
    """Stale, but the current version was made by this very message (a redelivery after a crash)."""
    ignored: str | None = None
    dead_letter_id: str | None = None


BeforeCommit = Callable[[Session, Transition, str | None], None]

# The hot path (`apply`, `current_version`) in Core statements, compiled once: the ORM's unit of
# work cost ~2 ms of CPU per transition, more than the round trips (see README, benchmark).
_SAGAS, _STEPS, _EVENTS = SagaRow.__table__, StepRow.__table__, EventRow.__table__
_LOCK = (select(_SAGAS.c.id, _SAGAS.c.saga_type, _SAGAS.c.state, _SAGAS.c.version, _SAGAS.c.input,
                _SAGAS.c.deadline_at, _SAGAS.c.failure_reason, _SAGAS.c.caused_by,
                _STEPS.c.index, _STEPS.c.name, _STEPS.c.status, _STEPS.c.attempts, _STEPS.c.compensation_attempts,
                _STEPS.c.result, _STEPS.c.error, _STEPS.c.task_id, _STEPS.c.eta,
                _STEPS.c.deadline_at.label("step_deadline_at"), _STEPS.c.finished_at)
         .join_from(_SAGAS, _STEPS, _STEPS.c.saga_id == _SAGAS.c.id)
         .where(_SAGAS.c.id == bindparam("saga_id")).order_by(_STEPS.c.index)
         .with_for_update(of=_SAGAS))
"""The run row, locked, with its steps: one statement (the steps change only under this lock)."""
_BUMP = (update(_SAGAS).where(_SAGAS.c.id == bindparam("b_id"), _SAGAS.c.version == bindparam("b_version"))
         .values(version=_SAGAS.c.version + 1))
"""Version-checked: a writer that did not hold the lock (or raced on SQLite) updates nothing."""
_STEP_UPDATE = update(_STEPS).where(_STEPS.c.saga_id == bindparam("b_saga_id"),
                                    _STEPS.c.index == bindparam("b_index"))
_VERSION = select(_SAGAS.c.version).where(_SAGAS.c.id == bindparam("saga_id"))
_TYPE = select(_SAGAS.c.saga_type).where(_SAGAS.c.id == bindparam("saga_id"))


class SagaStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions = session_factory(url)

    # ------------------------------------------------------------ writes

    def create_run(self, saga: Saga, data: dict[str, Any], *, idempotency_key: str | None = None,
                   saga_id: str | None = None, start_grace: float = 30.0, style: str = "orchestrated",
                   initial_event: str = "SagaCreated") -> tuple[str, bool]:
        """Insert a run with all its steps and its first history row, in one transaction.

        Returns (saga id, created). With an idempotency key already used for the same saga type
        and input, returns the existing run's id and False; with different content, raises
        `IdempotencyConflict`.
        """
        from datetime import timedelta

        now = utcnow()
        digest = input_hash(saga.name, data)
        run_id = saga_id or str(uuid.uuid4())
        try:
            with self.sessions.begin() as s:  # Core statements: the ORM's unit of work cost ~2 ms of CPU here
                s.execute(insert(_SAGAS), {
                    "id": run_id, "saga_type": saga.name, "style": style, "state": RunStatus.RUNNING.value,
                    "version": 1, "input": data, "input_hash": digest, "idempotency_key": idempotency_key,
                    "caused_by": "start", "created_at": now, "updated_at": now,
                    "deadline_at": now + timedelta(seconds=start_grace)})
                s.execute(insert(_STEPS), [{"saga_id": run_id, "index": i, "name": st.name,
                                            "status": StepStatus.PENDING.value, "attempts": 0,
                                            "compensation_attempts": 0} for i, st in enumerate(saga.steps)])
                s.execute(insert(_EVENTS), {"saga_id": run_id, "at": now, "type": initial_event, "detail": {
                    "saga_type": saga.name, "idempotency_key": idempotency_key}})
        except IntegrityError as e:
            with self.sessions() as s:
                existing = None if idempotency_key is None else s.scalars(
                    select(SagaRow).where(SagaRow.idempotency_key == idempotency_key)).first()
                if existing is None and s.get(SagaRow, run_id) is not None:
                    raise SagaIdTaken(f"a saga with id {run_id!r} exists already; choose another id") from e
            if existing is None:
                raise
            if existing.input_hash != digest:
                raise IdempotencyConflict(idempotency_key, existing.id) from None
            return existing.id, False
        return run_id, True

    def apply(self, saga: Saga, saga_id: str, outcome: Outcome, *, by: str,
              expected_version: int | None = None, timing: Timing = Timing(),
              message: MessageInfo | None = None, before_commit: BeforeCommit | None = None,
              now: datetime | None = None) -> Applied:
        """Decide and record the transition `outcome` causes, in one transaction.

        `expected_version` is the version the reporting message was dispatched at: any other
        current version makes the report stale and changes nothing (it is noted in the history).
        `before_commit` runs inside the transaction after the writes (to publish a dead letter).
        """
        now = now or utcnow()
        with self.sessions.begin() as s:
            state = self._lock_state(s, saga_id)
            if expected_version is not None and state.version != expected_version:
                own = state.version == expected_version + 1 and state.caused_by == by
                if not own:
                    s.add(EventRow(saga_id=saga_id, at=now, type="StaleMessageIgnored",
                                   step=getattr(outcome, "step", None), detail={
                                       "outcome": type(outcome).__name__, "by": by,
                                       "message_version": expected_version, "run_version": state.version}))
                return Applied(None, state, stale=True, own_commit=own)
            try:
                transition = decide(saga, state, outcome, now, timing)
            except Ignored as ig:
                if ig.event is not None:
                    ev = ig.event
                    s.add(EventRow(saga_id=saga_id, at=now, type=ev.type, step=ev.step, attempt=ev.attempt,
                                   detail={**ev.detail, "by": by}))
                return Applied(None, state, ignored=ig.reason, own_commit=state.caused_by == by)
            dead_letter_id = self._write(s, transition, by, now, message)
            if before_commit is not None:
                before_commit(s, transition, dead_letter_id)
            s.flush()  # the dead letter row, if any
        return Applied(transition, transition.after, dead_letter_id=dead_letter_id)

    def record(self, saga_id: str, type_: str, *, step: str | None = None, **detail: Any) -> None:
        """Append one history row without a transition (operator notes, late results)."""
        with self.sessions.begin() as s:
            s.add(EventRow(saga_id=saga_id, at=utcnow(), type=type_, step=step, detail=detail))

    def _lock_state(self, s: Session, saga_id: str) -> RunState:
        rows = s.execute(_LOCK, {"saga_id": saga_id}).all()
        if not rows:
            raise SagaNotFound(f"no saga with id {saga_id!r}")
        r = rows[0]
        return RunState(
            saga_id=r.id, saga_type=r.saga_type, status=RunStatus(r.state), version=r.version, input=r.input,
            deadline_at=r.deadline_at, failure_reason=r.failure_reason, caused_by=r.caused_by,
            steps=tuple(StepState(index=x.index, name=x.name, status=StepStatus(x.status), attempts=x.attempts,
                                  compensation_attempts=x.compensation_attempts, result=x.result, error=x.error,
                                  task_id=x.task_id, eta=x.eta, deadline_at=x.step_deadline_at,
                                  finished_at=x.finished_at) for x in rows))

    def _write(self, s: Session, t: Transition, by: str, now: datetime, message: MessageInfo | None) -> str | None:
        before, after = t.before, t.after
        bumped = s.execute(_BUMP, {"b_id": after.saga_id, "b_version": before.version, "state": after.status.value,
                                   "failure_reason": after.failure_reason, "deadline_at": after.deadline_at,
                                   "caused_by": by, "updated_at": now})
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            raise ConcurrentTransition(f"saga {after.saga_id} changed under us")
        for old, st in zip(before.steps, after.steps):
            if st == old:
                continue
            values: dict[str, Any] = {
                "b_saga_id": after.saga_id, "b_index": st.index, "status": st.status.value, "attempts": st.attempts,
                "compensation_attempts": st.compensation_attempts, "result": st.result, "error": st.error,
                "task_id": st.task_id, "eta": st.eta, "deadline_at": st.deadline_at, "finished_at": st.finished_at}
            if old.status == StepStatus.PENDING and st.status != StepStatus.PENDING:
                values["started_at"] = now
            if st.status == StepStatus.COMPENSATED and old.status != st.status:
                values["compensated_at"] = now
            s.execute(_STEP_UPDATE, values)
        if t.events:
            s.execute(insert(_EVENTS), [{"saga_id": after.saga_id, "at": now, "type": e.type, "step": e.step,
                                         "attempt": e.attempt, "detail": {**e.detail, "by": by}} for e in t.events])
        dl = t.dead_letter
        if dl is None:
            return None
        dl_id = str(uuid.uuid4())
        m = message or MessageInfo(dl.task, None, [after.saga_id, dl.step], {}, {})
        s.add(DeadLetterRow(id=dl_id, saga_id=after.saga_id, step=dl.step, kind=dl.kind, task_name=dl.task,
                            queue=m.queue, args=m.args, kwargs=m.kwargs, headers=m.headers,
                            attempts=dl.attempts, exception=f"{dl.error.type}: {dl.error.message}",
                            traceback=dl.error.traceback, status="OPEN", created_at=now))
        return dl_id

    # ------------------------------------------------------------ reads

    def current_version(self, saga_id: str) -> int | None:
        with get_engine(self.url).connect() as c:
            return c.execute(_VERSION, {"saga_id": saga_id}).scalar()

    def saga_type(self, saga_id: str) -> str | None:
        """The run's saga type (what `saga.start` needs to find its definition), or None."""
        with get_engine(self.url).connect() as c:
            return c.execute(_TYPE, {"saga_id": saga_id}).scalar()

    def load(self, saga_id: str) -> RunState:
        with self.sessions() as s:
            row = s.scalars(select(SagaRow).where(SagaRow.id == saga_id)
                            .options(selectinload(SagaRow.steps))).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            return to_state(row)

    def get(self, saga_id: str) -> SagaView:
        with self.sessions() as s:
            row = s.scalars(select(SagaRow).where(SagaRow.id == saga_id)
                            .options(selectinload(SagaRow.steps))).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            events = s.scalars(select(EventRow).where(EventRow.saga_id == saga_id).order_by(EventRow.id)).all()
            dls = s.scalars(select(DeadLetterRow).where(DeadLetterRow.saga_id == saga_id)
                            .order_by(DeadLetterRow.created_at)).all()
            return _saga_view(row, events, dls)

    def list(self, *, state: str | None = None, saga_type: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[SagaView], int]:
        """A page of runs (newest first) without their history, and the total count."""
        with self.sessions() as s:
            q = select(SagaRow)
            c = select(func.count()).select_from(SagaRow)
            if state:
                q, c = q.where(SagaRow.state == state), c.where(SagaRow.state == state)
            if saga_type:
                q, c = q.where(SagaRow.saga_type == saga_type), c.where(SagaRow.saga_type == saga_type)
            rows = s.scalars(q.order_by(SagaRow.created_at.desc(), SagaRow.id).limit(limit).offset(offset)
                             .options(selectinload(SagaRow.steps))).all()
            return [_saga_view(r, [], []) for r in rows], int(s.scalar(c) or 0)

    def due_starts(self, now: datetime, limit: int = 500) -> list[str]:
        """Running orchestrated runs past their start deadline with no step dispatched yet."""
        return self._due_runs(now, limit, dispatched=False)

    def due_deadlines(self, now: datetime, limit: int = 500) -> list[str]:
        """Running runs past their saga-level deadline (some step already dispatched)."""
        return self._due_runs(now, limit, dispatched=True)

    def _due_runs(self, now: datetime, limit: int, *, dispatched: bool) -> list[str]:
        # A running run's deadline is its start deadline until a step is dispatched, then its
        # saga-level deadline (if any): which one passed depends on whether a step is in flight.
        any_dispatched = select(StepRow.saga_id).where(StepRow.saga_id == SagaRow.id,
                                                       StepRow.status != StepStatus.PENDING.value).exists()
        with self.sessions() as s:
            return list(s.scalars(select(SagaRow.id).where(
                SagaRow.state == RunStatus.RUNNING.value, SagaRow.style == "orchestrated",
                SagaRow.deadline_at < now, any_dispatched if dispatched else ~any_dispatched).limit(limit)))

    def due_steps(self, now: datetime, limit: int = 500) -> list[tuple[str, str, str, int]]:
        """(saga id, saga type, step, run version) of in-flight steps past their deadline."""
        with self.sessions() as s:
            rows = s.execute(select(StepRow.saga_id, SagaRow.saga_type, StepRow.name, SagaRow.version)
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .where(StepRow.status.in_([StepStatus.RUNNING.value, StepStatus.COMPENSATING.value]),
                                    StepRow.deadline_at < now).limit(limit)).all()
            return [(a, b, c, d) for a, b, c, d in rows]

    # ------------------------------------------------------------ dead letters

    def dead_letters(self, *, status: str | None = "OPEN", saga_id: str | None = None,
                     limit: int = 100) -> list[DeadLetterView]:
        with self.sessions() as s:
            q = select(DeadLetterRow).order_by(DeadLetterRow.created_at.desc()).limit(limit)
            if status:
                q = q.where(DeadLetterRow.status == status)
            if saga_id:
                q = q.where(DeadLetterRow.saga_id == saga_id)
            return [_dead_letter_view(r) for r in s.scalars(q)]

    def dead_letter(self, dl_id: str) -> DeadLetterView:
        with self.sessions() as s:
            row = s.get(DeadLetterRow, dl_id)
            if row is None:
                raise DeadLetterNotFound(f"no dead letter with id {dl_id!r}")
            return _dead_letter_view(row)

    def add_dead_letter(self, s: Session, *, kind: str, task_name: str, exception: str, message: MessageInfo,
                        saga_id: str | None = None, step: str | None = None, attempts: int = 0,
                        traceback: str = "") -> str:
        """Insert a dead letter inside the caller's transaction `s`; returns its id."""
        dl_id = str(uuid.uuid4())
        s.add(DeadLetterRow(id=dl_id, saga_id=saga_id, step=step, kind=kind, task_name=task_name,
                            queue=message.queue, args=message.args, kwargs=message.kwargs,
                            headers=message.headers, attempts=attempts, exception=exception,
                            traceback=traceback, status="OPEN", created_at=utcnow()))
        if saga_id:
            s.add(EventRow(saga_id=saga_id, at=utcnow(), type="DeadLettered", step=step, attempt=attempts,
                           detail={"kind": kind, "error": exception, "dead_letter": dl_id}))
        return dl_id

    def resolve_dead_letter(self, s: Session, dl_id: str, status: str, resolution: str) -> bool:
        """Mark an OPEN dead letter REDRIVEN or DISCARDED inside `s`. False if it was not OPEN."""
        res = s.execute(update(DeadLetterRow).where(DeadLetterRow.id == dl_id, DeadLetterRow.status == "OPEN")
                        .values(status=status, resolution=resolution, resolved_at=utcnow()))
        return res.rowcount == 1  # type: ignore[attr-defined]


def to_state(row: SagaRow) -> RunState:
    return RunState(
        saga_id=row.id, saga_type=row.saga_type, status=RunStatus(row.state), version=row.version,
        input=row.input, deadline_at=row.deadline_at, failure_reason=row.failure_reason,
        caused_by=row.caused_by,
        steps=tuple(StepState(index=r.index, name=r.name, status=StepStatus(r.status), attempts=r.attempts,
                              compensation_attempts=r.compensation_attempts, result=r.result, error=r.error,
                              task_id=r.task_id, eta=r.eta, deadline_at=r.deadline_at,
                              finished_at=r.finished_at) for r in row.steps),
    )


def _saga_view(row: SagaRow, events: Any, dls: Any) -> SagaView:
    return SagaView(
        id=row.id, saga_type=row.saga_type, style=row.style, state=row.state, version=row.version,
        input=row.input, idempotency_key=row.idempotency_key, failure_reason=row.failure_reason,
        created_at=row.created_at, updated_at=row.updated_at, deadline_at=row.deadline_at,
        steps=[StepView(index=r.index, name=r.name, status=r.status, attempts=r.attempts,
                        compensation_attempts=r.compensation_attempts, result=r.result, error=r.error,
                        task_id=r.task_id, started_at=r.started_at, finished_at=r.finished_at,
                        compensated_at=r.compensated_at, deadline_at=r.deadline_at) for r in row.steps],
        events=[EventView(id=e.id, at=e.at, type=e.type, step=e.step, attempt=e.attempt, detail=e.detail)
                for e in events],
        dead_letters=[_dead_letter_view(d) for d in dls],
    )


def _dead_letter_view(r: DeadLetterRow) -> DeadLetterView:
    return DeadLetterView(id=r.id, saga_id=r.saga_id, step=r.step, kind=r.kind, task_name=r.task_name,
                          queue=r.queue, args=r.args, kwargs=r.kwargs, headers=r.headers, attempts=r.attempts,
                          exception=r.exception, traceback=r.traceback, status=r.status,
                          resolution=r.resolution, created_at=r.created_at, resolved_at=r.resolved_at)
