"""The store's reads: read models for the API, the CLI, the sweeper and the metrics."""
from __future__ import annotations

import builtins
from dataclasses import replace
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select, text
from sqlalchemy.orm import Session, selectinload, sessionmaker

from workflows.core.errors import DeadLetterNotFound, IdempotencyConflict, SagaNotFound
from workflows.core.state import RunStatus, StepStatus
from workflows.core.views import ChildView, DeadLetterView, EventView, SagaView, SignalView, StepView
from workflows.store.records import ChildLink, RunCounts, StepDuration, StepRetries, input_hash
from workflows.store.models import DeadLetterRow, EventRow, OutboxRow, SagaRow, SignalRow, StepRow


class Reads:
    """Mixed into every store: queries only, one session each."""

    url: str
    sessions: sessionmaker[Session]

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

    def get(self, saga_id: str) -> SagaView:
        with self.sessions() as s:
            row = s.scalars(select(SagaRow).where(SagaRow.id == saga_id)
                            .options(selectinload(SagaRow.steps))).first()
            if row is None:
                raise SagaNotFound(f"no saga with id {saga_id!r}")
            events = s.scalars(select(EventRow).where(EventRow.saga_id == saga_id).order_by(EventRow.id)).all()
            dls = s.scalars(select(DeadLetterRow).where(DeadLetterRow.saga_id == saga_id)
                            .order_by(DeadLetterRow.created_at)).all()
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

    def unsent_dead_letters(self, created_before: datetime, limit: int = 100) -> builtins.list[DeadLetterView]:
        with self.sessions() as s:
            rows = s.scalars(select(DeadLetterRow).where(DeadLetterRow.sent_at.is_(None),
                                                         DeadLetterRow.created_at < created_before)
                             .order_by(DeadLetterRow.created_at).limit(limit)).all()
            return [_dead_letter_view(r) for r in rows]

    def ping(self) -> None:
        with self.sessions() as s:
            s.execute(text("SELECT 1"))

    # ------------------------------------------------------------ metrics

    def run_counts(self) -> builtins.list[RunCounts]:
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.saga_type, SagaRow.state, func.count())
                             .group_by(SagaRow.saga_type, SagaRow.state)).all()
        return [RunCounts(t, st, int(n)) for t, st, n in rows]

    def step_retries(self) -> builtins.list[StepRetries]:
        extra_actions = func.sum(case((StepRow.attempts > 1, StepRow.attempts - 1), else_=0))
        extra_comps = func.sum(case((StepRow.compensation_attempts > 1, StepRow.compensation_attempts - 1), else_=0))
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.saga_type, StepRow.name, extra_actions, extra_comps,
                                    func.sum(StepRow.redeliveries), func.sum(StepRow.compensation_redeliveries))
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .group_by(SagaRow.saga_type, StepRow.name)).all()
        return [StepRetries(t, n, int(a or 0), int(c or 0), int(r or 0), int(rc or 0)) for t, n, a, c, r, rc in rows]

    def step_durations(self, since: datetime, limit: int) -> builtins.list[StepDuration]:
        """Actions that finished since `since`, newest first, at most `limit`."""
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.saga_type, StepRow.name, StepRow.started_at, StepRow.finished_at)
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .where(StepRow.finished_at >= since, StepRow.started_at.is_not(None))
                             .order_by(StepRow.finished_at.desc()).limit(limit)).all()
        return [StepDuration(t, n, max(0.0, (f - st).total_seconds())) for t, n, st, f in rows
                if st is not None and f is not None]  # the query excludes NULLs; the types do not know

    def dead_letter_counts(self) -> dict[str, int]:
        with self.sessions() as s:
            return {k: int(v) for k, v in s.execute(select(DeadLetterRow.status, func.count())
                                                    .group_by(DeadLetterRow.status)).all()}

    def waits_timed_out(self) -> dict[str, int]:
        """Waits whose deadline passed with no signal, by saga type (the wait rows, `task_id` 'wait:...')."""
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.saga_type, func.count()).select_from(StepRow)
                             .join(SagaRow, SagaRow.id == StepRow.saga_id)
                             .where(StepRow.task_id.like("wait:%"), StepRow.error.like("wait % timed out%"))
                             .group_by(SagaRow.saga_type)).all()
        return {t: int(n) for t, n in rows}

    def outbox_unsent(self) -> int:
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))) or 0)


def _saga_view(row: SagaRow, events: Sequence[EventRow], dls: Sequence[DeadLetterRow],
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
        events=[EventView(id=e.id, at=e.at, type=e.type, step=e.step, attempt=e.attempt, detail=e.detail)
                for e in events],
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
