"""The rows that hold sealed fields, for `sagas rotate-key`: runs' inputs, steps' results, dead
letters' messages, events, history rows, signals, projection records.

`SealedRows(url)` on the saga store's database (its own engine, shared per URL). Each batch is one
short transaction that locks the rows it rewrites (`FOR UPDATE` on PostgreSQL; SQLite's write
lock) and writes only the columns holding the envelopes (`TABLES`). A transition
committing meanwhile waits for the lock at most one batch and loses nothing: its version check,
state and steps are columns this never touches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import String, cast, or_, select, update

from workflows.core.sealed import SEALED
from workflows.store.db import get_engine
from workflows.store.models import DeadLetterRow, EventRow, OutboxRow, ProjectionRow, SagaRow, SignalRow, StepRow

Rewrite = Callable[[Any], Any]
"""A value with its envelopes resealed (the same object when there was nothing to change)."""

_HOLDS = f"%{SEALED}%"

TABLES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "runs": (SagaRow, ("input",)),
    "dead_letters": (DeadLetterRow, ("args", "kwargs")),
    "events": (OutboxRow, ("envelope",)),
    "history": (EventRow, ("detail",)),
    "signals": (SignalRow, ("payload",)),
    "projections": (ProjectionRow, ("body",)),
}
"""The tables whose rows (keyed by `id`) hold envelopes, and their columns that do: a run's input
(which no transition writes: set once, when the run is recorded), a dead letter's message, an
event's envelope as relayed, a history row's detail (an event's payload, a signal's), a signal's
payload, a record a projection still has to send. A step's result is `reseal_step_results`'s."""


class SealedRows:
    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    def reseal(self, table: str, rewrite: Rewrite, *, after: Any, limit: int, lock: bool = True) -> tuple[Any, int]:
        """Rewrite the sealed columns of the next `limit` rows of `table` (a name of `TABLES`, by
        id, after `after`; None: from the first) holding an envelope; returns the last id looked at
        (None: no more) and how many rows changed. `lock=False`: only read (a count), no row locked."""
        model, columns = TABLES[table]
        key = model.id
        cols = [getattr(model, c) for c in columns]
        holds = or_(*(cast(c, String).like(_HOLDS) for c in cols))
        with self.engine.begin() as conn:
            q = select(key, *cols).where(holds).order_by(key).limit(limit)
            if after is not None:
                q = q.where(key > after)
            if lock and conn.dialect.name == "postgresql":
                q = q.with_for_update()
            rows = conn.execute(q).all()
            changed = 0
            for row_id, *values in rows:
                new = [rewrite(v) for v in values]
                if any(a is not b for a, b in zip(new, values, strict=True)):
                    conn.execute(update(model).where(key == row_id).values(dict(zip(columns, new, strict=True))))
                    changed += 1
        return (rows[-1][0] if rows else None), changed

    def reseal_step_results(self, rewrite: Rewrite, *, after: str | None, limit: int,
                            lock: bool = True) -> tuple[str | None, int]:
        """The same for steps' results (`Step(sensitive_result=...)`), the steps of `limit` runs at a
        time. A transition writing a step's result waits for the lock and its own value stands; one
        decided on a result read before the rewrite may write the older envelope back (still opened
        by the old key, counted in `remaining`: run the rotation again)."""
        with self.engine.begin() as conn:
            holds = cast(StepRow.result, String).like(_HOLDS)
            which = select(StepRow.saga_id).where(holds).distinct().order_by(StepRow.saga_id).limit(limit)
            ids = conn.scalars(which if after is None else which.where(StepRow.saga_id > after)).all()
            if not ids:
                return None, 0
            q = select(StepRow.saga_id, StepRow.index, StepRow.result).where(StepRow.saga_id.in_(ids), holds)
            if lock and conn.dialect.name == "postgresql":
                q = q.with_for_update()
            changed = 0
            for saga_id, index, result in conn.execute(q).all():
                new = rewrite(result)
                if new is not result:
                    conn.execute(update(StepRow).where(StepRow.saga_id == saga_id, StepRow.index == index)
                                 .values(result=new))
                    changed += 1
        return ids[-1], changed
