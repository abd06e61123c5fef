"""The sweeper: no run is stranded.

A non-terminal run always has a message in flight or a deadline. Run periodically by celery
beat (`saga.sweep`) and on demand by `sagas sweep`, it acts on every deadline that passed:
- a run whose start message was lost (no step dispatched yet): re-publish `saga.start`;
- an action past its deadline (never picked up, or its worker vanished): TIMED_OUT, compensate;
- a compensation past its deadline: a failed attempt (retried, or dead-lettered when exhausted);
- a run past its saga-level deadline: cancelled, compensated.
Every action goes through the same version-checked transition as a step's own report, so a
sweeper racing a late result changes the run once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update

from .definition import registry
from .engine import ActionTimedOut, Cancel, CompensationFailed, ErrorInfo, RunStatus, StepStatus
from .errors import UnknownSaga
from .models import SagaRow, StepRow
from .orchestrator import apply_and_publish, publish_start
from .runtime import Runtime

log = logging.getLogger("workflows.sweeper")


@dataclass
class SweepReport:
    restarted: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    compensations_retried: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    """Runs reported by other detectors (choreographies whose last event is too old)."""

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


Detector = "Callable[[Runtime, datetime], list[str]]"
extra_detectors: list = []  # type: ignore[type-arg]
"""Functions (rt, now) -> saga ids reported as stuck; the choreography adds its own."""


def next_start_deadline(created_at: datetime, now: datetime, grace: float) -> datetime:
    """When to re-publish a start again if it still has not reached a worker.

    At least `grace` away, and as far away as the run is old: each re-publish at least doubles
    the wait, so a backlog (starts slow, not lost) is not flooded with more starts.
    """
    return now + timedelta(seconds=max(grace, (now - created_at).total_seconds()))


def sweep(rt: Runtime, now: datetime | None = None) -> SweepReport:
    now = now or datetime.now(timezone.utc)
    store = rt.store
    report = SweepReport()

    for saga_id in store.due_starts(now):
        with store.sessions.begin() as s:  # push the deadline first: one re-publish per grace period
            # Under the run's lock, look again: its start may have committed since due_starts read.
            created = s.scalar(select(SagaRow.created_at).where(SagaRow.id == saga_id).with_for_update())
            if created is None or s.scalar(select(StepRow.saga_id).where(
                    StepRow.saga_id == saga_id, StepRow.status != StepStatus.PENDING.value).limit(1)):
                continue
            pushed = s.execute(update(SagaRow).where(SagaRow.id == saga_id, SagaRow.state == RunStatus.RUNNING.value)
                               .values(deadline_at=next_start_deadline(created, now, rt.settings.start_grace)))
        if pushed.rowcount != 1:  # type: ignore[attr-defined]
            continue
        publish_start(rt, saga_id)
        report.restarted.append(saga_id)

    for saga_id, saga_type, step, version in store.due_steps(now):
        try:
            saga = registry.get(saga_type)
        except UnknownSaga:
            log.error("cannot sweep saga of unknown type %s", saga_type, extra={"saga_id": saga_id})
            continue
        run = store.load(saga_id)
        status = run.step(step).status.value
        if status == "RUNNING":
            outcome = ActionTimedOut(step, "no result before the step's deadline (message lost or worker gone)")
            bucket = report.timed_out
        else:
            index = saga.index_of(step)
            attempt = run.step(step).compensation_attempts + 1
            outcome = CompensationFailed(  # type: ignore[assignment]
                step, ErrorInfo("DeadlineExceeded", "no result before the compensation's deadline"), True,
                saga.steps[index].compensation_retry.countdown(attempt))
            bucket = report.compensations_retried
        applied = apply_and_publish(rt, saga, saga_id, outcome, by="sweeper", expected_version=version)
        if applied.transition is not None:
            bucket.append(f"{saga_id}:{step}")

    for saga_id in store.due_deadlines(now):
        run = store.load(saga_id)
        applied = apply_and_publish(rt, registry.get(run.saga_type), saga_id,
                                    Cancel("saga deadline passed", who="sweeper"), by="sweeper",
                                    expected_version=run.version)
        if applied.transition is not None:
            report.cancelled.append(saga_id)

    for detector in extra_detectors:
        report.stuck.extend(detector(rt, now))
    if any(report.counts().values()):
        log.warning("sweep: %s", report.counts())
    return report
