"""Runs that make no progress: RUNNING or COMPENSATING, unchanged for longer than their saga's bound
(`Saga(..., stuck_after=...)`, else `SAGA_STUCK_AFTER`). The sweeper records one `no_progress` notice
per run version (a run that moves on and stalls again gives a new one)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from workflows.core.errors import SagaNotFound
from workflows.core.registry import SagaRegistry
from workflows.notifications.notices import NO_PROGRESS, no_progress_notice
from workflows.notifications.notifier import Notifier
from workflows.store.base import SagaStore
from workflows.store.notifications import IdleRun

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
    idle = [r for r in store.runs_without_progress(now - timedelta(seconds=min(bounds)), limit)
            if _past(r, bound_of(definitions, r.saga_type, r.saga_version, default), now)]
    known = store.recorded_notifications([f"{NO_PROGRESS}:{r.saga_id}:{r.version}" for r in idle])
    bodies = []
    for r in idle:
        if f"{NO_PROGRESS}:{r.saga_id}:{r.version}" in known:
            continue  # recorded by an earlier sweep: once is enough
        try:
            run = store.load(r.saga_id)
        except SagaNotFound:
            continue
        if run.version != r.version:
            continue  # it moved meanwhile
        bound = bound_of(definitions, r.saga_type, r.saga_version, default)
        bodies.append(no_progress_notice(run, now, idle_since=r.updated_at, bound=bound, link=notifier.link))
    return notifier.record(bodies) if bodies else []


def _past(run: IdleRun, bound: float, now: datetime) -> bool:
    return bool(bound) and run.updated_at < now - timedelta(seconds=bound)
