"""The rows that hold sealed fields, for `sagas rotate-key`: runs' inputs and dead letters' messages.

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
from workflows.store.models import DeadLetterRow, SagaRow

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
