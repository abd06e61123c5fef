"""Runs that make no progress: RUNNING or COMPENSATING, unchanged for longer than their saga's bound
(`Saga(..., stuck_after=...)`, else `SAGA_STUCK_AFTER`). The sweeper records one `no_progress` notice
per run version (a run that moves on and stalls again gives a new one)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from workflows.core.errors import SagaNotFound
from workflows.core.registry import SagaRegistry
from workflows.notifications.notices import no_progress_notice
from workflows.notifications.notifier import Notifier
from workflows.store.base import SagaStore

log = logging.getLogger("workflows.notifications")


def bound_of(definitions: SagaRegistry, saga_type: str, saga_version: int, default: float) -> float:
    """Seconds without progress after which a run of that saga version needs a person (0: never)."""
    if definitions.has(saga_type, saga_version):
        declared = definitions.get(saga_type, saga_version).stuck_seconds
        if declared is not None:
            return declared
    return default


def record_idle_runs(store: SagaStore, notifier: Notifier, definitions: SagaRegistry, *, default: float,
                     now: datetime, limit: int = 500) -> list[str]:
    """Record a `no_progress` notice for every run idle past its bound; returns the ids recorded now."""
    bounds = [b for b in (default, *(s.stuck_seconds for s in definitions.definitions())) if b]
    if not bounds:
        return []
    bodies = []
    for idle in store.runs_without_progress(now - timedelta(seconds=min(bounds)), limit):
        bound = bound_of(definitions, idle.saga_type, idle.saga_version, default)
        if not bound or idle.updated_at >= now - timedelta(seconds=bound):
            continue
        try:
            run = store.load(idle.saga_id)
        except SagaNotFound:
            continue
        if run.version != idle.version:
            continue  # it moved meanwhile
        bodies.append(no_progress_notice(run, now, idle_since=idle.updated_at, bound=bound, link=notifier.link))
    return notifier.record(bodies) if bodies else []
