"""The saga store: runs, steps, history and dead letters behind one small interface.

Every transition is optimistic and atomic: read the run and its steps (one statement, one
snapshot), check the version the message expects, let the engine decide, then write the changed
rows and the history only if the run is still at the version decided on (`UPDATE sagas ...
WHERE version = :v`); if another writer got there first, read again and decide again. On
PostgreSQL the write is one statement (`transition_statement`); on SQLite, and for transitions
with a dead letter or an operator's hook, one transaction (`BEGIN IMMEDIATE` on SQLite).
"""
from __future__ import annotations

import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import bindparam, cast, func, insert, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from workflows.store.db import session_factory, statement_engine
from workflows.core.definition import Saga
from workflows.core.engine import (Command, HistoryEvent, Ignored, Outcome, RunState, RunStatus, Started, StepState,
                     StepStatus, Timing, Transition, decide, new_run)
from workflows.core.errors import DeadLetterNotFound, IdempotencyConflict, SagaError, SagaNotFound
from workflows.store.models import DeadLetterRow, EventRow, SagaRow, StepRow
from workflows.core.views import DeadLetterView, EventView, SagaView, StepView


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


@dataclass(frozen=True)
class Created:
    """The result of `SagaStore.create_run`."""

    saga_id: str
    created: bool
    """False: the idempotency key named a run that exists (returned as is; nothing to publish)."""
    state: RunState | None
    command: Command | None
    """Step 1's message, to publish once the run is committed."""


BeforeCommit = Callable[[Session, Transition, str | None], None]

STARTED_BY = "start"
"""`caused_by` of a run nothing has reported on since `create_run`: its first message may be lost."""

# The hot path (`load`, `apply`) in Core statements: the ORM's unit of work cost ~2 ms of CPU per
# transition, more than the round trips (see README, benchmark).
_SAGAS, _STEPS, _EVENTS = SagaRow.__table__, StepRow.__table__, EventRow.__table__
_STATE = (select(_SAGAS.c.id, _SAGAS.c.saga_type, _SAGAS.c.state, _SAGAS.c.version, _SAGAS.c.input,
                _SAGAS.c.deadline_at, _SAGAS.c.failure_reason, _SAGAS.c.caused_by,
                _STEPS.c.index, _STEPS.c.name, _STEPS.c.status, _STEPS.c.attempts, _STEPS.c.compensation_attempts,
                _STEPS.c.result, _STEPS.c.error, _STEPS.c.task_id, _STEPS.c.eta,
                _STEPS.c.deadline_at.label("step_deadline_at"), _STEPS.c.finished_at)
         .join_from(_SAGAS, _STEPS, _STEPS.c.saga_id == _SAGAS.c.id)
         .where(_SAGAS.c.id == bindparam("saga_id")).order_by(_STEPS.c.index))
"""The run with its steps: one statement, so one snapshot (every write changes both under a new version).

Not `FOR UPDATE`: on PostgreSQL a locking read that waited for another writer returns that
writer's run row but the steps as they were before it (READ COMMITTED re-checks only the locked
row), so a transition decided on it would be decided on a state that never existed."""
_BUMP = (update(_SAGAS).where(_SAGAS.c.id == bindparam("b_id"), _SAGAS.c.version == bindparam("b_version"))
         .values(version=_SAGAS.c.version + 1))
"""Version-checked: the transition commits only on the version it was decided on."""
_STEP_UPDATE = update(_STEPS).where(_STEPS.c.saga_id == bindparam("b_saga_id"),
                                    _STEPS.c.index == bindparam("b_index"))


class SagaStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.sessions = session_factory(url)
        self.single_statement = not url.startswith("sqlite")
        """Write a transition as one statement (PostgreSQL's data-modifying WITH); SQLite cannot."""

    # ------------------------------------------------------------ writes

    def create_run(self, saga: Saga, data: dict[str, Any], *, idempotency_key: str | None = None,
                   saga_id: str | None = None, timing: Timing = Timing()) -> Created:
        """Insert a run already started (step 1 dispatched), its steps and its history, atomically: one
        statement on PostgreSQL (`creation_statement`), one transaction on SQLite.

        The caller publishes `command` after the commit; if that message is lost (the caller died
        first, the broker was down), the sweeper sends it again once step 1's deadline passes
        (`STARTED_BY`). With an idempotency key already used for the same saga type and input,
        returns the existing run with `created` False and no command; with different content,
        raises `IdempotencyConflict`.
        """
        now = utcnow()
        digest = input_hash(saga.name, data)
        run_id = saga_id or str(uuid.uuid4())
        t = decide(saga, new_run(saga, run_id, data, STARTED_BY), Started(), now, timing)
        run = t.after
        saga_row = {"id": run_id, "saga_type": saga.name, "style": "orchestrated", "state": run.status.value,
                    "version": run.version, "input": data, "input_hash": digest, "idempotency_key": idempotency_key,
                    "caused_by": STARTED_BY, "created_at": now, "updated_at": now, "deadline_at": run.deadline_at}
        steps = [_step_values(run_id, st, None, now) for st in run.steps]
        events = [{"saga_id": run_id, "at": now, "type": "SagaCreated", "step": None, "attempt": None,
                   "detail": {"saga_type": saga.name, "idempotency_key": idempotency_key}},
                  *_event_values(run_id, t.events, STARTED_BY, now)]
        try:
            if self.single_statement:  # PostgreSQL: one statement, one round trip, atomic by itself
                with statement_engine(self.url).connect() as c:
                    c.execute(*creation_statement(saga_row, steps, events))
            else:
                with self.sessions.begin() as s:  # Core statements: the ORM's unit of work cost ~2 ms of CPU here
                    s.execute(insert(_SAGAS), saga_row)
                    s.execute(insert(_STEPS), steps)
                    s.execute(insert(_EVENTS), events)
        except IntegrityError as e:
            taken = e
        else:
            return Created(run_id, True, run, t.command)
        # the idempotency key or the id is taken (outside the except: a conflict is not "during" it)
        existing = None if idempotency_key is None else self.run_for_key(idempotency_key, saga.name, data)
        if existing is not None:
            return Created(existing, False, None, None)
        with self.sessions() as s:
            if s.get(SagaRow, run_id) is not None:
                raise SagaIdTaken(f"a saga with id {run_id!r} exists already; choose another id") from taken
        raise taken

    def run_for_key(self, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
        """The id of the run `idempotency_key` already names, or None if it names none. Raises
        `IdempotencyConflict` if the key was used for another saga type or other input."""
        with self.sessions() as s:
            row = s.execute(select(SagaRow.id, SagaRow.input_hash)
                            .where(SagaRow.idempotency_key == idempotency_key)).first()
        if row is None:
            return None
        if row.input_hash != input_hash(saga_type, data):  # the hash covers the saga type
            raise IdempotencyConflict(idempotency_key, row.id)
        return str(row.id)

    def apply(self, saga: Saga, saga_id: str, outcome: Outcome, *, by: str,
              expected_version: int | None = None, timing: Timing = Timing(),
              message: MessageInfo | None = None, on_dead_letter: BeforeCommit | None = None,
              before_commit: BeforeCommit | None = None, now: datetime | None = None,
              state: RunState | None = None) -> Applied:
        """Decide and record the transition `outcome` causes, atomically.

        Optimistic: the engine decides on a snapshot of the run (`state`, if the caller read it
        already, or read now), and the transition is written only if the run is still at that
        version. If another writer got there first, read again and decide again: a message
        reporting on the old version then finds itself stale.

        `expected_version` is the version the reporting message was dispatched at: any other
        version makes the report stale and changes nothing (it is noted in the history).
        `on_dead_letter` runs inside the transaction when the transition writes a dead letter (to
        copy it to the broker); `before_commit` always runs inside it, after the writes.
        """
        while True:
            at = now or utcnow()
            run = state if state is not None else self.load(saga_id)
            state = None  # a retry reads the run again
            if expected_version is not None and run.version != expected_version:
                return self.ignore_stale(run, expected_version, by=by, step=getattr(outcome, "step", None),
                                         what=type(outcome).__name__, at=at)
            try:
                transition = decide(saga, run, outcome, at, timing)
            except Ignored as ig:
                if ig.event is not None:
                    self.record(saga_id, ig.event.type, step=ig.event.step, attempt=ig.event.attempt, at=at,
                                **{**ig.event.detail, "by": by})
                return Applied(None, run, ignored=ig.reason, own_commit=run.caused_by == by)
            try:
                dead_letter_id = self._commit(transition, by, at, message, on_dead_letter, before_commit)
            except ConcurrentTransition:
                continue  # someone else made progress: decide again on what they wrote
            return Applied(transition, transition.after, dead_letter_id=dead_letter_id)

    def _commit(self, t: Transition, by: str, now: datetime, message: MessageInfo | None,
                on_dead_letter: BeforeCommit | None, before_commit: BeforeCommit | None) -> str | None:
        """Write `t` if the run is still at `t.before.version`; else raise `ConcurrentTransition`."""
        if self.single_statement and t.dead_letter is None and before_commit is None:
            # PostgreSQL: the whole transition is one statement, so one round trip and atomic
            # without BEGIN/COMMIT (the hot path: a step succeeded, the next one is dispatched).
            with statement_engine(self.url).connect() as c:
                if c.execute(*transition_statement(t, by, now)).scalar() != 1:
                    raise ConcurrentTransition(f"saga {t.after.saga_id} changed under us")
            return None
        with self.sessions.begin() as s:
            dead_letter_id = self._write(s, t, by, now, message)
            if dead_letter_id is not None and on_dead_letter is not None:
                on_dead_letter(s, t, dead_letter_id)
            if before_commit is not None:
                before_commit(s, t, dead_letter_id)
            s.flush()  # the dead letter row, if any
        return dead_letter_id

    def ignore_stale(self, run: RunState, expected_version: int, *, by: str, step: str | None, what: str,
                     at: datetime | None = None) -> Applied:
        """A message dispatched at `expected_version` found `run` at another version: it changes
        nothing. Noted in the history, unless the current version is this message's own commit
        (a redelivery after a crash, which may owe the follow-up: `Applied.own_commit`)."""
        own = run.version == expected_version + 1 and run.caused_by == by
        if not own:
            self.record(run.saga_id, "StaleMessageIgnored", step=step, at=at, outcome=what,
                        message_version=expected_version, run_version=run.version, by=by)
        return Applied(None, run, stale=True, own_commit=own)

    def record(self, saga_id: str, type_: str, *, step: str | None = None, attempt: int | None = None,
               at: datetime | None = None, **detail: Any) -> None:
        """Append one history row without a transition (stale or ignored reports, operator notes):
        one statement, outside any transaction."""
        with statement_engine(self.url).connect() as c:
            c.execute(insert(_EVENTS), {"saga_id": saga_id, "at": at or utcnow(), "type": type_, "step": step,
                                        "attempt": attempt, "detail": detail})
            c.commit()

    def _write(self, s: Session, t: Transition, by: str, now: datetime, message: MessageInfo | None) -> str | None:
        before, after = t.before, t.after
        bumped = s.execute(_BUMP, {"b_id": after.saga_id, "b_version": before.version, "state": after.status.value,
                                   "failure_reason": after.failure_reason, "deadline_at": after.deadline_at,
                                   "caused_by": by, "updated_at": now})
        if bumped.rowcount != 1:  # type: ignore[attr-defined]
            raise ConcurrentTransition(f"saga {after.saga_id} changed under us")
        for old, st in zip(before.steps, after.steps):
            if st != old:
                s.execute(_STEP_UPDATE, _step_values(after.saga_id, st, old, now, key="b_"))
        if t.events:
            s.execute(insert(_EVENTS), _event_values(after.saga_id, t.events, by, now))
        dl = t.dead_letter
        if dl is None:
            return None
        # (the engine's own "DeadLettered" history row is among t.events)
        return self.add_dead_letter(s, kind=dl.kind, task_name=dl.task, exception=str(dl.error),
                                    message=message or MessageInfo(dl.task, None, [after.saga_id, dl.step], {}, {}),
                                    saga_id=after.saga_id, step=dl.step, attempts=dl.attempts,
                                    traceback=dl.error.traceback, at=now, history=False)

    # ------------------------------------------------------------ reads

    def load(self, saga_id: str) -> RunState:
        """The run and its steps, as of one snapshot (one round trip on PostgreSQL)."""
        with statement_engine(self.url).connect() as c:
            rows = c.execute(_STATE, {"saga_id": saga_id}).all()
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

    def due_deadlines(self, now: datetime, limit: int = 500) -> list[str]:
        """Running orchestrated runs past their saga-level deadline."""
        with self.sessions() as s:
            return list(s.scalars(select(SagaRow.id).where(
                SagaRow.state == RunStatus.RUNNING.value, SagaRow.style == "orchestrated",
                SagaRow.deadline_at < now).limit(limit)))

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
                        traceback: str = "", at: datetime | None = None, history: bool = True) -> str:
        """Insert a dead letter inside the caller's transaction `s` (and, with `history`, its
        "DeadLettered" history row); returns its id."""
        dl_id, at = str(uuid.uuid4()), at or utcnow()
        s.add(DeadLetterRow(id=dl_id, saga_id=saga_id, step=step, kind=kind, task_name=task_name,
                            queue=message.queue, args=message.args, kwargs=message.kwargs,
                            headers=message.headers, attempts=attempts, exception=exception,
                            traceback=traceback, status="OPEN", created_at=at))
        if saga_id and history:
            s.add(EventRow(saga_id=saga_id, at=at, type="DeadLettered", step=step, attempt=attempts,
                           detail={"kind": kind, "error": exception, "dead_letter": dl_id}))
        return dl_id

    def resolve_dead_letter(self, s: Session, dl_id: str, status: str, resolution: str) -> bool:
        """Mark an OPEN dead letter REDRIVEN or DISCARDED inside `s`. False if it was not OPEN."""
        res = s.execute(update(DeadLetterRow).where(DeadLetterRow.id == dl_id, DeadLetterRow.status == "OPEN")
                        .values(status=status, resolution=resolution, resolved_at=utcnow()))
        return res.rowcount == 1  # type: ignore[attr-defined]


def _step_values(saga_id: str, st: StepState, old: StepState | None, now: datetime, key: str = "") -> dict[str, Any]:
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


_STEP_COLUMNS = ("status", "attempts", "compensation_attempts", "result", "error", "task_id", "eta", "deadline_at",
                 "finished_at", "started_at", "compensated_at")
_EVENT_COLUMNS = ("at", "type", "step", "attempt", "detail")


def transition_statement(t: Transition, by: str, now: datetime) -> tuple[Any, dict[str, Any]]:
    """Transition `t` as one PostgreSQL statement and its parameters; it returns 1 if written, 0
    if the run is no longer at `t.before.version`. The same writes as `_write` (a test compares them):

        WITH bump AS (UPDATE sagas SET version = version + 1, ... WHERE id = :id AND version = :v
                      RETURNING id),
             step_1 AS (UPDATE saga_steps SET ... FROM bump WHERE saga_id = bump.id AND index = 1 ...),
             history AS (INSERT INTO saga_events (...) SELECT bump.id, ... FROM bump UNION ALL ...)
        SELECT count(*) FROM bump

    Every part reads `bump`, so nothing is written unless the version matched.
    """
    before, after = t.before, t.after
    params: dict[str, Any] = {"t_id": after.saga_id, "t_version": before.version, "t_state": after.status.value,
                              "t_failure_reason": after.failure_reason, "t_deadline_at": after.deadline_at,
                              "t_caused_by": by, "t_updated_at": now}
    shape = []
    for old, st in zip(before.steps, after.steps):
        if st != old:
            values = _step_values(after.saga_id, st, old, now)
            shape.append((st.index, tuple(c for c in _STEP_COLUMNS if c in values)))
            params.update({f"s{st.index}_{c}": values[c] for c in _STEP_COLUMNS if c in values})
    for k, row in enumerate(_event_values(after.saga_id, t.events, by, now)):
        params.update({f"e{k}_{c}": row[c] for c in _EVENT_COLUMNS})
    return _transition_shape(tuple(shape), len(t.events)), params


@functools.lru_cache(maxsize=256)
def _transition_shape(steps: tuple[tuple[int, tuple[str, ...]], ...], n_events: int) -> Any:
    """The statement for one shape of transition (which steps change which columns, how many
    events), built and compiled once: only its parameters differ from one saga to the next."""
    bump = (update(_SAGAS).where(_SAGAS.c.id == bindparam("t_id"), _SAGAS.c.version == bindparam("t_version"))
            .values(version=_SAGAS.c.version + 1, state=bindparam("t_state"),
                    failure_reason=bindparam("t_failure_reason"), deadline_at=bindparam("t_deadline_at"),
                    caused_by=bindparam("t_caused_by"), updated_at=bindparam("t_updated_at"))
            .returning(_SAGAS.c.id).cte("bump"))
    parts = [update(_STEPS).where(_STEPS.c.saga_id == bump.c.id, _STEPS.c.index == index)
             .values({c: bindparam(f"s{index}_{c}") for c in columns})
             .returning(_STEPS.c.index).cte(f"step_{index}") for index, columns in steps]
    if n_events:
        parts.append(_insert_rows(bump, _EVENTS, "e", _EVENT_COLUMNS, n_events).cte("history"))
    return select(func.count()).select_from(bump).add_cte(*parts)


_SAGA_COLUMNS = ("id", "saga_type", "style", "state", "version", "input", "input_hash", "idempotency_key",
                 "caused_by", "created_at", "updated_at", "deadline_at")
_STEP_INSERT_COLUMNS = ("index", "name", *_STEP_COLUMNS)


def creation_statement(saga_row: dict[str, Any], steps: list[dict[str, Any]],
                       events: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """A new run, its steps and its history as one PostgreSQL statement and its parameters (the
    same rows `create_run` inserts in a transaction on SQLite; a test compares them):

        WITH run AS (INSERT INTO sagas (...) VALUES (...) RETURNING id),
             steps AS (INSERT INTO saga_steps (...) SELECT run.id, ... FROM run UNION ALL ...),
             history AS (INSERT INTO saga_events (...) SELECT run.id, ... FROM run UNION ALL ...)
        SELECT count(*) FROM run

    A taken id or idempotency key fails the whole statement (IntegrityError), writing nothing.
    """
    params = {f"r_{c}": saga_row[c] for c in _SAGA_COLUMNS}
    for k, row in enumerate(steps):
        params.update({f"s{k}_{c}": row[c] for c in _STEP_INSERT_COLUMNS})
    for k, row in enumerate(events):
        params.update({f"e{k}_{c}": row[c] for c in _EVENT_COLUMNS})
    return _creation_shape(len(steps), len(events)), params


@functools.lru_cache(maxsize=64)
def _creation_shape(n_steps: int, n_events: int) -> Any:
    run = (insert(_SAGAS).values({c: bindparam(f"r_{c}", type_=_SAGAS.c[c].type) for c in _SAGA_COLUMNS})
           .returning(_SAGAS.c.id).cte("run"))
    return select(func.count()).select_from(run).add_cte(
        _insert_rows(run, _STEPS, "s", _STEP_INSERT_COLUMNS, n_steps).cte("steps"),
        _insert_rows(run, _EVENTS, "e", _EVENT_COLUMNS, n_events).cte("history"))


def _insert_rows(parent: Any, table: Any, prefix: str, columns: tuple[str, ...], n: int) -> Any:
    """INSERT INTO table (saga_id, columns) SELECT parent.id, :<prefix><k>_<column>... FROM parent,
    n rows: written only if `parent` (a data-modifying CTE) wrote its row. Each value is cast to
    its column's type (a UNION of untyped values is text)."""
    rows = [select(parent.c.id, *(cast(bindparam(f"{prefix}{k}_{c}", type_=table.c[c].type), table.c[c].type)
                                  for c in columns)) for k in range(n)]
    return (insert(table).from_select(["saga_id", *columns], rows[0] if n == 1 else union_all(*rows))
            .returning(table.c.saga_id))


def _event_values(saga_id: str, events: tuple[HistoryEvent, ...], by: str, now: datetime) -> list[dict[str, Any]]:
    return [{"saga_id": saga_id, "at": now, "type": e.type, "step": e.step, "attempt": e.attempt,
             "detail": {**e.detail, "by": by}} for e in events]


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
