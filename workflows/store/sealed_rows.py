"""The rows that hold sealed fields, for `sagas rotate-key`: runs' inputs, steps' results, dead
letters' messages.

`SealedRows(url)` on the saga store's database (its own engine, shared per URL). Each batch is one
short transaction that locks the rows it rewrites (`FOR UPDATE` on PostgreSQL; SQLite's write
lock) and writes only the column holding the envelopes: a run's `input` (which no transition
writes: it is set once, when the run is recorded) or a dead letter's `args`/`kwargs`. A transition
committing meanwhile waits for the lock at most one batch and loses nothing: its version check,
state and steps are columns this never touches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import String, cast, select, update

from workflows.core.sealed import SEALED
from workflows.store.db import get_engine
from workflows.store.models import DeadLetterRow, SagaRow, StepRow

Rewrite = Callable[[Any], Any]
"""A value with its envelopes resealed (the same object when there was nothing to change)."""

_HOLDS = f"%{SEALED}%"


class SealedRows:
    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    def reseal_runs(self, rewrite: Rewrite, *, after: str, limit: int) -> tuple[str | None, int]:
        """Rewrite the inputs of the next `limit` runs (by id, after `after`) holding an envelope;
        returns the last id looked at (None: no more) and how many inputs changed."""
        with self.engine.begin() as conn:
            q = (select(SagaRow.id, SagaRow.input).where(SagaRow.id > after,
                                                         cast(SagaRow.input, String).like(_HOLDS))
                 .order_by(SagaRow.id).limit(limit))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            rows = conn.execute(q).all()
            changed = 0
            for saga_id, data in rows:
                new = rewrite(data)
                if new is not data:
                    conn.execute(update(SagaRow).where(SagaRow.id == saga_id).values(input=new))
                    changed += 1
        return (rows[-1][0] if rows else None), changed

    def reseal_step_results(self, rewrite: Rewrite, *, after: str, limit: int) -> tuple[str | None, int]:
        """The same for steps' results (`Step(sensitive_result=...)`), the steps of `limit` runs at a
        time. A transition writing a step's result waits for the lock and its own value stands; one
        decided on a result read before the rewrite may write the older envelope back (still opened
        by the old key, counted in `remaining`: run the rotation again)."""
        with self.engine.begin() as conn:
            holds = cast(StepRow.result, String).like(_HOLDS)
            ids = conn.scalars(select(StepRow.saga_id).where(StepRow.saga_id > after, holds).distinct()
                               .order_by(StepRow.saga_id).limit(limit)).all()
            if not ids:
                return None, 0
            q = select(StepRow.saga_id, StepRow.index, StepRow.result).where(StepRow.saga_id.in_(ids), holds)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            changed = 0
            for saga_id, index, result in conn.execute(q).all():
                new = rewrite(result)
                if new is not result:
                    conn.execute(update(StepRow).where(StepRow.saga_id == saga_id, StepRow.index == index)
                                 .values(result=new))
                    changed += 1
        return ids[-1], changed

    def reseal_dead_letters(self, rewrite: Rewrite, *, after: str, limit: int) -> tuple[str | None, int]:
        """The same for dead letters' messages (a step message keeps its run's input)."""
        with self.engine.begin() as conn:
            q = (select(DeadLetterRow.id, DeadLetterRow.args, DeadLetterRow.kwargs)
                 .where(DeadLetterRow.id > after, (cast(DeadLetterRow.args, String).like(_HOLDS))
                        | (cast(DeadLetterRow.kwargs, String).like(_HOLDS)))
                 .order_by(DeadLetterRow.id).limit(limit))
            if conn.dialect.name == "postgresql":
                q = q.with_for_update()
            rows = conn.execute(q).all()
            changed = 0
            for dl_id, args, kwargs in rows:
                new_args, new_kwargs = rewrite(args), rewrite(kwargs)
                if new_args is not args or new_kwargs is not kwargs:
                    conn.execute(update(DeadLetterRow).where(DeadLetterRow.id == dl_id)
                                 .values(args=new_args, kwargs=new_kwargs))
                    changed += 1
        return (rows[-1][0] if rows else None), changed
