"""The store's read model: one query per question, shared by every caller that asks it.

`Reads` (mixed into every store) answers the API, the CLI, the operators and the sweeper; the
console and the metrics (`store.console`), the caller's transaction (`store.joined`) and the
choreography (`store.events`) ask the same questions through the functions below, on their own
session or connection: a run by idempotency key, a run's type, its history, its dead letters,
the saga list's filters. Queries only.
"""
from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, func, or_, select, text, type_coerce, union
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, selectinload, sessionmaker

from workflows.core.errors import DeadLetterNotFound, IdempotencyConflict, SagaNotFound
from workflows.core.state import RunStatus, StepStatus
from workflows.core.views import ChildView, DeadLetterView, EventView, SagaView, SignalView, StepView
from workflows.store.models import DeadLetterRow, EventRow, SagaRow, SignalRow, StepRow
from workflows.store.records import ChildLink, DeadLetterQuery, SagaQuery, input_hash

_IN_FLIGHT = (StepStatus.RUNNING.value, StepStatus.COMPENSATING.value)
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


class Reads:
    """Mixed into every store: queries only, one session each."""

    url: str
    sessions: sessionmaker[Session]

    def run_for_key(self, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
        """The id of the run `idempotency_key` already names, or None if it names none. Raises
        `IdempotencyConflict` if the key was used for another saga type or other input."""
        with self.sessions() as s:
            return run_for_key(s, idempotency_key, saga_type, data)

    def saga_type(self, saga_id: str) -> str | None:
        with self.sessions() as s:
            return saga_type_of(s, saga_id)

    def history(self, saga_id: str) -> builtins.list[EventView]:
        with self.sessions() as s:
            return history(s, saga_id)

    def get(self, saga_id: str) -> SagaView:
        with self.sessions() as s:
            row = s.scalars(select(SagaRow).where(SagaRow.id == saga_id)
                            .options(selectinload(SagaRow.steps))).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            events = history(s, saga_id)
            dls = dead_letter_rows(s, DeadLetterQuery(status=None, saga_id=saga_id, oldest_first=True), None)
            sigs = s.scalars(select(SignalRow).where(SignalRow.saga_id == saga_id)
                             .order_by(SignalRow.received_at, SignalRow.id)).all()
            kids = s.execute(select(SagaRow.id, SagaRow.saga_type, SagaRow.state, SagaRow.parent_step,
                                    SagaRow.created_at, SagaRow.updated_at)
                             .where(SagaRow.parent_id == saga_id).order_by(SagaRow.created_at, SagaRow.id)).all()
            return replace(_saga_view(row, events, dls, [ChildView(*k) for k in kids]),
                           signals=[_signal_view(x) for x in sigs])

    def list(self, *, state: str | None = None, saga_type: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[list[SagaView], int]:
        """A page of runs (newest first) without their history, and the total count."""
        where = saga_filters(SagaQuery(state=state, saga_type=saga_type), self.url)
        with self.sessions() as s:
            rows = s.scalars(select(SagaRow).where(*where).order_by(*NEWEST_FIRST).limit(limit).offset(offset)
                             .options(selectinload(SagaRow.steps))).all()
            total = s.scalar(select(func.count()).select_from(SagaRow).where(*where))
            return [_saga_view(r, [], []) for r in rows], int(total or 0)

    def due_deadlines(self, now: datetime, limit: int = 500) -> builtins.list[str]:
        """Running or waiting orchestrated runs past their saga-level deadline."""
        with self.sessions() as s:
            return list(s.scalars(select(SagaRow.id).where(
                SagaRow.state.in_([RunStatus.RUNNING.value, RunStatus.WAITING.value]), SagaRow.style == "orchestrated",
                SagaRow.deadline_at < now).limit(limit)))

    def due_waits(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str]]:
        """(saga id, saga type, wait) of waits whose deadline passed: one range of the index
        `ix_saga_steps_deadline` (status, deadline_at), however many runs are parked."""
        with self.sessions() as s:
            rows = s.execute(select(StepRow.saga_id, SagaRow.saga_type, StepRow.name)
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .where(StepRow.status == StepStatus.WAITING.value, StepRow.deadline_at < now)
                             .order_by(StepRow.deadline_at).limit(limit)).all()
            return [(a, b, c) for a, b, c in rows]

    def due_starts(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str]]:
        """(saga id, saga type) of SCHEDULED runs whose start time came (index `ix_sagas_state_deadline`)."""
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.id, SagaRow.saga_type)
                             .where(SagaRow.state == RunStatus.SCHEDULED.value, SagaRow.deadline_at <= now)
                             .order_by(SagaRow.deadline_at).limit(limit)).all()
            return [(a, b) for a, b in rows]

    def signal_for_key(self, saga_id: str, idempotency_key: str) -> SignalView | None:
        """The signal `idempotency_key` already names on run `saga_id`, or None."""
        with self.sessions() as s:
            row = s.scalars(select(SignalRow).where(SignalRow.saga_id == saga_id,
                                                    SignalRow.idempotency_key == idempotency_key)).first()
            return _signal_view(row) if row is not None else None

    def due_steps(self, now: datetime, limit: int = 500) -> builtins.list[tuple[str, str, str, int]]:
        """(saga id, saga type, step, run version) of in-flight steps past their deadline."""
        with self.sessions() as s:
            rows = s.execute(select(StepRow.saga_id, SagaRow.saga_type, StepRow.name, SagaRow.version)
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .where(StepRow.status.in_([StepStatus.RUNNING.value, StepStatus.COMPENSATING.value]),
                                    StepRow.deadline_at < now).limit(limit)).all()
            return [(a, b, c, d) for a, b, c, d in rows]

    def child_links(self, updated_before: datetime, limit: int = 500) -> builtins.list[ChildLink]:
        """Child steps still waiting (RUNNING or COMPENSATING) with their child runs, where the child
        or the parent has not changed since `updated_before`: what the sweeper checks for a lost
        order (cancel, compensate) or report."""
        child = SagaRow.__table__.alias("child")
        parent = SagaRow.__table__.alias("parent")
        steps = StepRow.__table__
        with self.sessions() as s:
            rows = s.execute(
                select(parent.c.id, parent.c.saga_type, parent.c.state, steps.c.name, steps.c.status,
                       child.c.id, child.c.saga_type, child.c.state)
                .select_from(child.join(parent, parent.c.id == child.c.parent_id)
                             .join(steps, (steps.c.saga_id == parent.c.id) & (steps.c.name == child.c.parent_step)))
                .where(child.c.parent_id.is_not(None),
                       (child.c.updated_at < updated_before) | (parent.c.updated_at < updated_before),
                       steps.c.status.in_([StepStatus.RUNNING.value, StepStatus.COMPENSATING.value]))
                .limit(limit)).all()
        return [ChildLink(*r) for r in rows]

    def dead_letters(self, *, status: str | None = "OPEN", saga_id: str | None = None,
                     limit: int = 100) -> builtins.list[DeadLetterView]:
        with self.sessions() as s:
            rows = dead_letter_rows(s, DeadLetterQuery(status=status, saga_id=saga_id), limit)
            return [_dead_letter_view(r) for r in rows]

    def dead_letter(self, dl_id: str) -> DeadLetterView:
        with self.sessions() as s:
            row = s.get(DeadLetterRow, dl_id)
            if row is None:
                raise DeadLetterNotFound(f"no dead letter with id {dl_id!r}")
            return _dead_letter_view(row)

    def unsent_dead_letters(self, created_before: datetime, limit: int = 100) -> builtins.list[DeadLetterView]:
        with self.sessions() as s:
            rows = s.scalars(select(DeadLetterRow).where(DeadLetterRow.sent_at.is_(None),
                                                         DeadLetterRow.created_at < created_before)
                             .order_by(DeadLetterRow.created_at).limit(limit)).all()
            return [_dead_letter_view(r) for r in rows]

    def ping(self) -> None:
        with self.sessions() as s:
            s.execute(text("SELECT 1"))


def _saga_view(row: SagaRow, events: Sequence[EventView], dls: Sequence[DeadLetterRow],
               children: builtins.list[ChildView] | None = None) -> SagaView:
    return SagaView(
        id=row.id, saga_type=row.saga_type, style=row.style, state=row.state, version=row.version,
        input=row.input, idempotency_key=row.idempotency_key, failure_reason=row.failure_reason,
        created_at=row.created_at, updated_at=row.updated_at, deadline_at=row.deadline_at,
        steps=[StepView(index=r.index, name=r.name, status=r.status, attempts=r.attempts,
                        compensation_attempts=r.compensation_attempts, result=r.result, error=r.error,
                        task_id=r.task_id, started_at=r.started_at, finished_at=r.finished_at,
                        compensated_at=r.compensated_at, deadline_at=r.deadline_at, redeliveries=r.redeliveries,
                        compensation_redeliveries=r.compensation_redeliveries) for r in row.steps],
        events=list(events),
        dead_letters=[_dead_letter_view(d) for d in dls], saga_version=row.saga_version,
        parent_id=row.parent_id, parent_step=row.parent_step, children=children or [],
    )


def _signal_view(r: SignalRow) -> SignalView:
    return SignalView(id=r.id, name=r.name, payload=r.payload, idempotency_key=r.idempotency_key, who=r.who,
                      received_at=r.received_at, consumed_by=r.consumed_by, consumed_at=r.consumed_at)


def _dead_letter_view(r: DeadLetterRow) -> DeadLetterView:
    return DeadLetterView(id=r.id, saga_id=r.saga_id, step=r.step, kind=r.kind, task_name=r.task_name,
                          queue=r.queue, args=r.args, kwargs=r.kwargs, headers=r.headers, attempts=r.attempts,
                          exception=r.exception, traceback=r.traceback, status=r.status,
                          resolution=r.resolution, created_at=r.created_at, resolved_at=r.resolved_at)


# ------------------------------------------------------------------ the shared questions

def run_for_key(s: Session | Connection, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
    """The id of the run `idempotency_key` names as `s` sees it, or None. Raises
    `IdempotencyConflict` if the key was used for another saga type or other input."""
    row = s.execute(select(SagaRow.id, SagaRow.input_hash).where(SagaRow.idempotency_key == idempotency_key)).first()
    if row is None:
        return None
    if row.input_hash != input_hash(saga_type, data):  # the hash covers the saga type
        raise IdempotencyConflict(idempotency_key, row.id)
    return str(row.id)


def saga_type_of(s: Session | Connection, saga_id: str) -> str | None:
    """The saga type of run `saga_id` as `s` sees it, or None if there is no such run."""
    return s.scalar(select(SagaRow.saga_type).where(SagaRow.id == saga_id))


_HISTORY_COLUMNS = (EventRow.id, EventRow.at, EventRow.type, EventRow.step, EventRow.attempt, EventRow.detail)


def history(s: Session, saga_id: str, types: Sequence[str] | None = None) -> builtins.list[EventView]:
    """The run's history rows (of `types`, if given), oldest first."""
    q = select(*_HISTORY_COLUMNS).where(EventRow.saga_id == saga_id)
    if types is not None:
        q = q.where(EventRow.type.in_(list(types)))
    return [EventView(id=i, at=at, type=t, step=st, attempt=a, detail=d or {})
            for i, at, t, st, a, d in s.execute(q.order_by(EventRow.id)).all()]


def dead_letter_rows(s: Session, q: DeadLetterQuery, limit: int | None) -> Sequence[DeadLetterRow]:
    """The dead letters matching every filter of `q` (its own limit and offset aside), newest or oldest first."""
    stmt = select(DeadLetterRow).where(*dead_letter_filters(q)).order_by(*dead_letter_order(q))
    if q.saga_type:
        stmt = stmt.join(SagaRow, SagaRow.id == DeadLetterRow.saga_id)
    return s.scalars(stmt if limit is None else stmt.limit(limit)).all()


def dead_letter_filters(q: DeadLetterQuery) -> builtins.list[ColumnElement[bool]]:
    """`q`'s filters (its saga type one reads `SagaRow`: join it)."""
    where: builtins.list[ColumnElement[bool]] = []
    if q.status:
        where.append(DeadLetterRow.status == q.status)
    if q.saga_type:
        where.append(SagaRow.saga_type == q.saga_type)
    if q.step:
        where.append(DeadLetterRow.step == q.step)
    if q.kind:
        where.append(DeadLetterRow.kind == q.kind)
    if q.saga_id:
        where.append(DeadLetterRow.saga_id == q.saga_id)
    return where


def dead_letter_order(q: DeadLetterQuery) -> tuple[Any, ...]:
    return (DeadLetterRow.created_at, DeadLetterRow.id) if q.oldest_first else (DeadLetterRow.created_at.desc(),
                                                                                 DeadLetterRow.id)


NEWEST_FIRST = (SagaRow.created_at.desc(), SagaRow.id.desc())
"""The saga list's order (on `ix_sagas_created`)."""


def saga_filters(q: SagaQuery, url: str) -> builtins.list[ColumnElement[bool]]:
    """The saga list's filters: every one `q` gives must hold (`store.console` names the index each uses)."""
    where: builtins.list[ColumnElement[bool]] = []
    if q.state:
        where.append(SagaRow.state == q.state)
    if q.saga_type:
        where.append(SagaRow.saga_type == q.saga_type)
    if q.created_after is not None:
        where.append(SagaRow.created_at >= q.created_after)
    if q.created_before is not None:
        where.append(SagaRow.created_at < q.created_before)
    if q.stuck_at is not None:  # the few late runs, found on the deadline indexes, then joined by id
        late_steps = select(StepRow.saga_id).where(StepRow.status.in_(_IN_FLIGHT), StepRow.deadline_at < q.stuck_at)
        late_runs = select(SagaRow.id).where(SagaRow.deadline_at < q.stuck_at, SagaRow.state == RunStatus.RUNNING.value)
        where.append(and_(SagaRow.state.not_in(TERMINAL), SagaRow.id.in_(union(late_steps, late_runs))))
    if q.open_dead_letters:
        where.append(SagaRow.id.in_(select(DeadLetterRow.saga_id).where(DeadLetterRow.status == "OPEN")))
    if q.search:
        term = q.search.strip()
        matches: builtins.list[ColumnElement[bool]] = [SagaRow.id == term, SagaRow.idempotency_key == term]
        matches += [_input_has(key, term, url) for key in q.search_keys]
        where.append(or_(*matches))
    return where


def _input_has(key: str, value: str, url: str) -> ColumnElement[bool]:
    """`input[key] == value` for a top-level key: containment on PostgreSQL (the GIN index)."""
    if url.startswith("postgresql"):
        return type_coerce(SagaRow.input, JSONB).contains({key: value})
    path = '$."' + key.replace('"', "") + '"'
    return func.json_extract(SagaRow.input, path) == value


def list_query(q: SagaQuery, url: str) -> Select[Any]:
    """The saga list's page statement (EXPLAIN in the scale test)."""
    return select(SagaRow.id).where(*saga_filters(q, url)).order_by(*NEWEST_FIRST).limit(q.limit).offset(q.offset)
