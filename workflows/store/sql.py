"""The saga store on any SQL database SQLAlchemy speaks: every write one transaction.

Every transition is optimistic and atomic: the run is read as one snapshot (`load`), the engine
decides, and `commit` writes the changed rows, the history and the dead letters only if the run
is still at the version decided on (`UPDATE sagas ... WHERE version = :v`); if another writer got
there first it raises `ConcurrentTransition` and the caller (the runtime's decision loop) reads
again. `SQLiteStore` is this class; `PostgresStore` replaces the hot path's transaction by one
statement.
"""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workflows.core.errors import ConcurrentTransition, DeadLetterHandled, SagaIdTaken, SagaNotFound
from workflows.core.state import (DeadLetter, DeadLetterClosure, HistoryEvent, RunState, RunStatus, Signal,
                                  StepState, StepStatus, Transition)
from workflows.store.records import Created
from workflows.store.console import ConsoleReads
from workflows.store.db import session_factory, statement_engine
from workflows.store.events import EventStore
from workflows.store.joined import JoinedStore
from workflows.store.notifications import NotificationRows
from workflows.store.projections import PROJECTIONS, ProjectionRows, projection_values
from workflows.store.models import DeadLetterRow, OutboxRow, SagaRow, SignalRow
from workflows.store.reads import Reads
from workflows.store.rows import (EVENTS, SAGAS, STEPS, child_creations, creation_rows, dead_letter_values,
                                  event_values, redelivery_event, redelivery_update, signal_values, step_values)
from workflows.store.workers import Workers

# The hot path (`load`, `commit`) in Core statements: the ORM's unit of work cost ~2 ms of CPU per
# transition, more than the round trips (see README, benchmark).
STATE = (select(SAGAS.c.id, SAGAS.c.saga_type, SAGAS.c.state, SAGAS.c.version, SAGAS.c.saga_version,
                 SAGAS.c.input, SAGAS.c.deadline_at, SAGAS.c.failure_reason, SAGAS.c.caused_by,
                 SAGAS.c.signals_pending, SAGAS.c.parent_id, SAGAS.c.parent_step, SAGAS.c.trace_context,
                 STEPS.c.index.label("step_index"), STEPS.c.name, STEPS.c.status, STEPS.c.attempts,
                 STEPS.c.compensation_attempts, STEPS.c.result, STEPS.c.error, STEPS.c.task_id, STEPS.c.eta,
                 STEPS.c.deadline_at.label("step_deadline_at"), STEPS.c.finished_at)
          .join_from(SAGAS, STEPS, STEPS.c.saga_id == SAGAS.c.id)
          .where(SAGAS.c.id == bindparam("saga_id")).order_by(STEPS.c.index))
"""The run with its steps: one statement, so one snapshot (every write changes both under a new version).

Not `FOR UPDATE`: on PostgreSQL a locking read that waited for another writer returns that
writer's run row but the steps as they were before it (READ COMMITTED re-checks only the locked
row), so a transition decided on it would be decided on a state that never existed."""
_BUMP = (update(SAGAS).where(SAGAS.c.id == bindparam("b_id"), SAGAS.c.version == bindparam("b_version"))
         .values(version=SAGAS.c.version + 1))
"""Version-checked: the transition commits only on the version it was decided on."""
_STEP_UPDATE = update(STEPS).where(STEPS.c.saga_id == bindparam("b_saga_id"),
                                   STEPS.c.index == bindparam("b_index"))
_DEAD_LETTERS = DeadLetterRow.__table__
_OUTBOX = OutboxRow.__table__
_SIGNALS = SignalRow.__table__
KEPT = (select(_SIGNALS).where(_SIGNALS.c.saga_id == bindparam("saga_id"), _SIGNALS.c.consumed_by.is_(None))
         .order_by(_SIGNALS.c.received_at, _SIGNALS.c.id))
"""The signals kept for a run's waits not begun yet; read only when the run counts some."""


class SqlStore(Reads, ConsoleReads, EventStore, JoinedStore, Workers, ProjectionRows, NotificationRows):
    """The store interface (`workflows.store.base.SagaStore`) with one transaction per write (and the
    starts written in a caller's transaction, `workflows.store.joined`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions = session_factory(url)

    # ------------------------------------------------------------ runs

    def create_run(self, t: Transition, *, idempotency_key: str | None, now: datetime) -> Created:
        saga_row, steps, events = creation_rows(t, idempotency_key=idempotency_key, by=t.after.caused_by or "",
                                                now=now)
        try:
            with self.sessions.begin() as s:  # Core statements: the ORM's unit of work cost ~2 ms of CPU here
                s.execute(insert(SAGAS), saga_row)
                s.execute(insert(STEPS), steps)
                s.execute(insert(EVENTS), events)
                self._create_children(s, t, now)
                if t.projected:
                    s.execute(insert(PROJECTIONS), projection_values(t.projected, now))
        except IntegrityError as e:
            return self._taken(t, idempotency_key, e)
        return Created(t.after.saga_id, True)

    # ------------------------------------------------------------ retention

    def prune(self, ended_before: datetime, *, limit: int = 1000) -> int:
        """Delete up to `limit` runs that ended (COMPLETED or COMPENSATED) before `ended_before`,
        with their steps, history, signals, resolved dead letters and sent outbox rows, in one transaction
        (a choreography's processed-event markers stay: they are what makes a late duplicate a no-op);
        returns how many. A run with an open dead letter or an unsent outbox row is kept, and so
        is every run that has not ended (FAILED waits for an operator). Call it until it returns 0."""
        ended = (RunStatus.COMPLETED.value, RunStatus.COMPENSATED.value)
        with self.sessions.begin() as s:
            ids = list(s.scalars(
                select(SagaRow.id).where(
                    SagaRow.state.in_(ended), SagaRow.updated_at < ended_before,
                    ~exists().where(_DEAD_LETTERS.c.saga_id == SagaRow.id, _DEAD_LETTERS.c.status == "OPEN"),
                    ~exists().where(_OUTBOX.c.saga_id == SagaRow.id, _OUTBOX.c.sent_at.is_(None)))
                .limit(limit).with_for_update(skip_locked=True)))
            if not ids:
                return 0
            s.execute(delete(EVENTS).where(EVENTS.c.saga_id.in_(ids)))
            s.execute(delete(_DEAD_LETTERS).where(_DEAD_LETTERS.c.saga_id.in_(ids)))
            s.execute(delete(_OUTBOX).where(_OUTBOX.c.saga_id.in_(ids)))
            s.execute(delete(_SIGNALS).where(_SIGNALS.c.saga_id.in_(ids)))
            s.execute(delete(STEPS).where(STEPS.c.saga_id.in_(ids)))
            s.execute(delete(SAGAS).where(SAGAS.c.id.in_(ids)))
        return len(ids)

    def _taken(self, t: Transition, idempotency_key: str | None, error: IntegrityError) -> Created:
        """The insert of `t`'s run failed on a unique key: the idempotency key's run, or a taken id."""
        run = t.after
        existing = None if idempotency_key is None else self.run_for_key(idempotency_key, run.saga_type, run.input)
        if existing is not None:
            return Created(existing, False)
        with self.sessions() as s:
            if s.get(SagaRow, run.saga_id) is not None:
                raise SagaIdTaken(f"a saga with id {run.saga_id!r} exists already; choose another id") from error
        raise error

    def load(self, saga_id: str) -> RunState:
        """The run and its steps, as of one snapshot (one round trip on PostgreSQL)."""
        with statement_engine(self.url).connect() as c:
            rows = c.execute(STATE, {"saga_id": saga_id}).all()
            # kept signals change only under a new version, with the run: a second read of them is
            # consistent with the first as long as the version is unchanged (the write checks it)
            kept = c.execute(KEPT, {"saga_id": saga_id}).all() if rows and rows[0].signals_pending else []
        return run_state(saga_id, rows, kept)

    def commit(self, t: Transition, *, by: str, now: datetime) -> None:
        try:
            with self.sessions.begin() as s:
                self._write(s, t, by, now)
        except IntegrityError as e:
            if t.signals:  # a signal's key recorded by another writer: decided again, it finds it
                raise ConcurrentTransition(f"saga {t.after.saga_id}: signal recorded by another writer") from e
            raise

    def _write(self, s: Session, t: Transition, by: str, now: datetime) -> None:
        before, after = t.before, t.after
        bumped = s.execute(_BUMP, {"b_id": after.saga_id, "b_version": before.version, "state": after.status.value,
                                   "failure_reason": after.failure_reason, "deadline_at": after.deadline_at,
                                   "caused_by": by, "updated_at": now, "signals_pending": len(after.signals),
                                   "saga_version": after.saga_version,
                                   **({"trace_context": after.trace} if after.trace != before.trace else {})})
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            raise ConcurrentTransition(f"saga {after.saga_id} changed under us")
        if t.signals:
            s.execute(insert(_SIGNALS), [signal_values(after.saga_id, x, now) for x in t.signals])
        for x in t.consumed:
            s.execute(update(_SIGNALS).where(_SIGNALS.c.id == x.id, _SIGNALS.c.consumed_by.is_(None))
                      .values(consumed_by=x.consumed_by, consumed_at=now))
        for old, st in zip(before.steps, after.steps):
            if st != old:
                s.execute(_STEP_UPDATE, step_values(after.saga_id, st, old, now, key="b_"))
        if t.events:
            s.execute(insert(EVENTS), event_values(after.saga_id, t.events, by, now))
        for closure in t.closures:
            self._close(s, after.saga_id, closure, now)
        if t.dead_letters:
            s.execute(insert(_DEAD_LETTERS), [dead_letter_values(d, after.saga_id, now) for d in t.dead_letters])
        self._create_children(s, t, now)
        if t.projected:
            s.execute(insert(PROJECTIONS), projection_values(t.projected, now))

    @staticmethod
    def _create_children(s: Session | Connection, t: Transition, now: datetime) -> None:
        """The child runs `t` starts (their runs, steps, history), in the same transaction as `t`."""
        for saga_row, steps, events in child_creations(t, now):
            s.execute(insert(SAGAS), saga_row)
            s.execute(insert(STEPS), steps)
            s.execute(insert(EVENTS), events)

    @staticmethod
    def _close(s: Session, saga_id: str, c: DeadLetterClosure, now: datetime) -> None:
        q = update(_DEAD_LETTERS).where(_DEAD_LETTERS.c.status == "OPEN")
        if c.dead_letter_id is not None:
            q = q.where(_DEAD_LETTERS.c.id == c.dead_letter_id)
        else:
            q = q.where(_DEAD_LETTERS.c.saga_id == saga_id, _DEAD_LETTERS.c.step == c.step)
            if c.kind is not None:
                q = q.where(_DEAD_LETTERS.c.kind == c.kind)
        done = s.execute(q.values(status=c.status, resolution=c.resolution, resolved_at=now))
        if c.dead_letter_id is not None and done.rowcount != 1:  # type: ignore[attr-defined]
            raise DeadLetterHandled(f"dead letter {c.dead_letter_id} was handled already")

    def record(self, saga_id: str, event: HistoryEvent, *, by: str | None, now: datetime) -> None:
        """One statement, outside any transaction."""
        detail = {**event.detail, "by": by} if by is not None else dict(event.detail)
        with statement_engine(self.url).connect() as c:
            c.execute(insert(EVENTS), {"saga_id": saga_id, "at": now, "type": event.type, "step": event.step,
                                       "attempt": event.attempt, "detail": detail})
            c.commit()

    def count_redelivery(self, saga_id: str, step: str, kind: str, task_id: str, attempt: int, *,
                         by: str, now: datetime, first: bool = False) -> int | None:
        with self.sessions.begin() as s:
            n = s.execute(*redelivery_update(saga_id, step, kind, task_id, attempt, first)).scalar()
            if n is not None:
                s.execute(insert(EVENTS), redelivery_event(saga_id, step, kind, task_id, attempt, n, by, now))
        return None if n is None else int(n)

    # ------------------------------------------------------------ dead letters

    def add_dead_letter(self, dl: DeadLetter, *, saga_id: str | None, now: datetime) -> None:
        with self.sessions.begin() as s:
            s.execute(insert(_DEAD_LETTERS), dead_letter_values(dl, saga_id, now))
            if saga_id:
                s.execute(insert(EVENTS), {"saga_id": saga_id, "at": now, "type": "DeadLettered", "step": dl.step,
                                           "attempt": dl.attempts,
                                           "detail": {"kind": dl.kind, "error": str(dl.error), "dead_letter": dl.id}})

    def discard_dead_letter(self, dl_id: str, *, resolution: str, event: HistoryEvent | None,
                            now: datetime) -> bool:
        with self.sessions.begin() as s:
            saga_id = s.scalar(select(DeadLetterRow.saga_id).where(DeadLetterRow.id == dl_id))
            try:
                self._close(s, "", DeadLetterClosure("DISCARDED", resolution, dead_letter_id=dl_id), now)
            except DeadLetterHandled:
                return False
            if saga_id and event is not None:
                s.execute(insert(EVENTS), {"saga_id": saga_id, "at": now, "type": event.type, "step": event.step,
                                           "attempt": event.attempt, "detail": dict(event.detail)})
        return True

    def mark_dead_letters_sent(self, ids: Sequence[str], now: datetime) -> None:
        if not ids:
            return
        with self.sessions.begin() as s:
            s.execute(update(_DEAD_LETTERS).where(_DEAD_LETTERS.c.id.in_(list(ids)), _DEAD_LETTERS.c.sent_at.is_(None))
                      .values(sent_at=now))


def run_state(saga_id: str, rows: Sequence[Any], kept: Sequence[Any]) -> RunState:
    """The run read by `STATE` (its rows, one per step) with its kept signals (`KEPT`)."""
    if not rows:
        raise SagaNotFound(f"no saga with id {saga_id!r}")
    r = rows[0]
    return RunState(
        signals=tuple(Signal(id=k.id, name=k.name, payload=k.payload, idempotency_key=k.idempotency_key,
                             who=k.who, received_at=k.received_at) for k in kept),
        saga_id=r.id, saga_type=r.saga_type, status=RunStatus(r.state), version=r.version, input=r.input,
        deadline_at=r.deadline_at, failure_reason=r.failure_reason, caused_by=r.caused_by,
        parent_id=r.parent_id, parent_step=r.parent_step, saga_version=r.saga_version, trace=r.trace_context,
        steps=tuple(StepState(index=x.step_index, name=x.name, status=StepStatus(x.status), attempts=x.attempts,
                              compensation_attempts=x.compensation_attempts, result=x.result, error=x.error,
                              task_id=x.task_id, eta=x.eta, deadline_at=x.step_deadline_at,
                              finished_at=x.finished_at) for x in rows))
