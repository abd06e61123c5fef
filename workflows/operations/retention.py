"""Retention: delete the runs that ended long ago, with their history (`sagas prune`).

`saga_events` grows by about ten rows per run and nothing else removes them. `prune` deletes, in
batches of `batch` runs (one transaction each, so it never holds a long lock), every run that
ended (COMPLETED or COMPENSATED) more than `older_than` ago, with its steps, history, resolved
dead letters and sent outbox rows. A run with an open dead letter, a FAILED run (it waits for an
operator) and a run still in flight are never deleted. Time comes from the runtime's clock.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from workflows.core.errors import InvalidOperation
from workflows.runtime.container import Runtime


def prune(rt: Runtime, older_than: timedelta, *, batch: int = 1000, now: datetime | None = None,
          max_batches: int | None = None) -> int:
    """Delete every run that ended before `now - older_than`; returns how many were deleted."""
    if older_than < timedelta(0):
        raise InvalidOperation(f"older_than must not be negative, not {older_than}")
    if not 1 <= batch <= 100_000:
        raise InvalidOperation(f"batch must be between 1 and 100000, not {batch}")
    cutoff = (now or rt.clock()) - older_than
    total = batches = 0
    while max_batches is None or batches < max_batches:
        deleted = rt.store.prune(cutoff, limit=batch)
        total += deleted
        batches += 1
        if deleted < batch:
            break
    return total
