"""The console's and the metrics' reads: the saga list with its filters and counts, the activity
chart, dead letters by saga type and step, the collector's aggregates. Mixed into every store
(`SqlStore`); queries only, one session each. The filters are the read model's (`store.reads`).

Each query is shaped for an index of revision 0008 (or older): the list is newest first on
`ix_sagas_created` (`ix_sagas_state_created`, `ix_sagas_type_created` with a state or type),
the search by business key is `input @> {"order_id": ...}` on the GIN index `ix_sagas_input`
(PostgreSQL; SQLite reads the key with `json_extract`), "stuck" joins the late runs found
on `ix_saga_steps_deadline` and `ix_sagas_deadline`, "has open dead letters" one on `ix_dead_letters_status`.
`tests/servers/test_console_scale.py` checks the plans with EXPLAIN at 10,000 runs.
"""
from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session, sessionmaker

from workflows.core.views import DeadLetterView
from workflows.store.models import DeadLetterRow, OutboxRow, SagaRow, StepRow
from workflows.store.reads import (NEWEST_FIRST, TERMINAL, _dead_letter_view, dead_letter_filters, dead_letter_order,
                                   list_query, saga_filters)
from workflows.store.records import (ActivityBucket, DeadLetterGroup, DeadLetterPage, DeadLetterQuery, RunCounts,
                                     SagaQuery, SagaSummary, SagaSummaryPage, StepDuration, StepRetries)


class ConsoleReads:
    """The console's queries (see the module docstring for the index each one uses) and the metrics'."""

    url: str
    sessions: sessionmaker[Session]

    # ------------------------------------------------------------ sagas

    def search_sagas(self, q: SagaQuery) -> SagaSummaryPage:
        """A page of runs (newest first) matching every filter of `q`, the total, and the count per
        state under the same filters but the state one (the list's tabs)."""
        open_dls = (select(func.count()).select_from(DeadLetterRow)
                    .where(DeadLetterRow.saga_id == SagaRow.id, DeadLetterRow.status == "OPEN")
                    .correlate(SagaRow).scalar_subquery())
        page = (select(SagaRow.id, SagaRow.saga_type, SagaRow.style, SagaRow.state, SagaRow.idempotency_key,
                       SagaRow.failure_reason, SagaRow.created_at, SagaRow.updated_at, open_dls.label("open_dls"))
                .where(*saga_filters(q, self.url)).order_by(*NEWEST_FIRST).limit(q.limit).offset(q.offset))
        without_state = replace(q, state=None)
        counts = (select(SagaRow.state, func.count()).where(*saga_filters(without_state, self.url))
                  .group_by(SagaRow.state))
        with self.sessions() as s:
            rows = s.execute(page).all()
            by_state = {str(st): int(n) for st, n in s.execute(counts).all()}
        total = by_state.get(q.state, 0) if q.state else sum(by_state.values())
        items = [SagaSummary(id=r.id, saga_type=r.saga_type, style=r.style, state=r.state,
                             idempotency_key=r.idempotency_key, failure_reason=r.failure_reason,
                             created_at=r.created_at, updated_at=r.updated_at, open_dead_letters=int(r.open_dls or 0))
                 for r in rows]
        return SagaSummaryPage(items=items, total=total, by_state=by_state)

    def list_query(self, q: SagaQuery) -> Select[Any]:
        """The list's page statement (for EXPLAIN in the scale test)."""
        return list_query(q, self.url)

    def activity(self, until: datetime, *, minutes: int = 60, bucket_minutes: int = 5) -> builtins.list[ActivityBucket]:
        """Runs started, completed, compensated and failed in each `bucket_minutes` of the last `minutes`
        before `until`. Started counts `created_at`; the others a terminal run's `updated_at` (when it
        ended), among the runs created in the window or the `minutes` before it: the read stays on
        `ix_sagas_created` (no index on `updated_at`, which every step writes), so a run that lasted
        longer than `minutes` and ended in the window is not counted."""
        since = until - timedelta(minutes=minutes)
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.state, SagaRow.created_at, SagaRow.updated_at)
                             .where(SagaRow.created_at >= since - timedelta(minutes=minutes),
                                    SagaRow.created_at < until)).all()
        n = max(1, minutes // bucket_minutes)
        buckets = [ActivityBucket(start=since + timedelta(minutes=i * bucket_minutes)) for i in range(n)]
        width = timedelta(minutes=bucket_minutes)

        def slot(at: datetime) -> int | None:
            if at < since or at >= until:
                return None
            return min(n - 1, int((at - since) / width))

        for state, created, updated in rows:
            i = slot(created)
            if i is not None:
                buckets[i].started += 1
            j = slot(updated) if state in TERMINAL else None
            if j is not None:
                b = buckets[j]
                if state == "COMPLETED":
                    b.completed += 1
                elif state == "COMPENSATED":
                    b.compensated += 1
                else:
                    b.failed += 1
        return buckets

    def saga_type_names(self) -> builtins.list[str]:
        """The saga types with runs in the store (on `ix_sagas_type_created`)."""
        with self.sessions() as s:
            return [str(t) for t in s.scalars(select(SagaRow.saga_type).distinct().order_by(SagaRow.saga_type))]

    # ------------------------------------------------------------ dead letters

    def search_dead_letters(self, q: DeadLetterQuery) -> DeadLetterPage:
        """Dead letters matching `q`, newest first, with the saga type of each one's run."""
        stmt = (select(DeadLetterRow, SagaRow.saga_type).outerjoin(SagaRow, SagaRow.id == DeadLetterRow.saga_id)
                .where(*dead_letter_filters(q)).order_by(*dead_letter_order(q))
                .limit(q.limit).offset(q.offset))
        count = (select(func.count()).select_from(DeadLetterRow)
                 .outerjoin(SagaRow, SagaRow.id == DeadLetterRow.saga_id).where(*dead_letter_filters(q)))
        with self.sessions() as s:
            rows = s.execute(stmt).all()
            total = int(s.scalar(count) or 0)
        return DeadLetterPage(items=[_dead_letter_view(r[0]) for r in rows],
                              saga_types={r[0].id: r[1] for r in rows if r[1] is not None}, total=total)

    def open_dead_letter_groups(self) -> builtins.list[DeadLetterGroup]:
        """OPEN dead letters counted by (saga type, step, kind): what one bulk redrive would take."""
        with self.sessions() as s:
            rows = s.execute(select(SagaRow.saga_type, DeadLetterRow.step, DeadLetterRow.kind, func.count())
                             .join(SagaRow, SagaRow.id == DeadLetterRow.saga_id)
                             .where(DeadLetterRow.status == "OPEN")
                             .group_by(SagaRow.saga_type, DeadLetterRow.step, DeadLetterRow.kind)
                             .order_by(SagaRow.saga_type, DeadLetterRow.step)).all()
        return [DeadLetterGroup(saga_type=t, step=st or "", kind=k, count=int(n)) for t, st, k, n in rows]

    def open_dead_letters_of(self, saga_type: str, step: str, limit: int = 10_000) -> Sequence[DeadLetterView]:
        """Every OPEN dead letter of step `step` of runs of `saga_type`, oldest first (a bulk redrive)."""
        page = self.search_dead_letters(DeadLetterQuery(status="OPEN", saga_type=saga_type, step=step,
                                                        limit=limit, oldest_first=True))
        return page.items

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
