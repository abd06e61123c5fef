"""The sweeper: no run is stranded.

A non-terminal run always has a message in flight or a deadline. Run periodically by celery
beat (`saga.sweep`) and on demand by `sagas sweep`, it acts on every deadline that passed:
- the first step of a run nothing has reported on since `start_saga` recorded it: its message
  may never have been published (the caller died, the broker was down): send it again, once;
- an action past its deadline (never picked up, or its worker vanished): TIMED_OUT, compensate;
- a compensation past its deadline: a failed attempt (retried, or dead-lettered when exhausted);
- a run past its saga-level deadline: cancelled, compensated.
Every action goes through the same version-checked transition as a step's own report, so a
sweeper racing a late result changes the run once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from workflows.core.definition import registry
from workflows.core.engine import ActionTimedOut, Cancel, CompensationFailed, ErrorInfo, Redispatch
from workflows.core.errors import UnknownSaga
from workflows.orchestration.step_task import apply_and_publish
from workflows.runtime.container import Runtime
from workflows.store.sql import STARTED_BY

log = logging.getLogger("workflows.sweeper")


@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
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


def sweep(rt: Runtime, now: datetime | None = None) -> SweepReport:
    now = now or datetime.now(timezone.utc)
    store = rt.store
    report = SweepReport()

    for saga_id, saga_type, step, version in store.due_steps(now):
        try:
            saga = registry.get(saga_type)
        except UnknownSaga:
            log.error("cannot sweep saga of unknown type %s", saga_type, extra={"saga_id": saga_id})
            continue
        run = store.load(saga_id)
        status = run.step(step).status.value
        if status == "RUNNING" and run.caused_by == STARTED_BY:
            outcome = Redispatch(step, "no result before the step's deadline, and none since the saga was created "
                                       "(its first message may never have been published)")
            bucket = report.redispatched
        elif status == "RUNNING":
            outcome = ActionTimedOut(step, "no result before the step's deadline (message lost or worker gone)")
            bucket = report.timed_out
        else:
            index = saga.index_of(step)
            attempt = run.step(step).compensation_attempts + 1
            outcome = CompensationFailed(  # type: ignore[assignment]
                step, ErrorInfo("DeadlineExceeded", "no result before the compensation's deadline"), True,
                saga.steps[index].compensation_retry.countdown(attempt))
            bucket = report.compensations_retried
        applied = apply_and_publish(rt, saga, saga_id, outcome, by="sweeper", expected_version=version, state=run)
        if applied.transition is not None:
            bucket.append(f"{saga_id}:{step}")

    for saga_id in store.due_deadlines(now):
        run = store.load(saga_id)
        applied = apply_and_publish(rt, registry.get(run.saga_type), saga_id,
                                    Cancel("saga deadline passed", who="sweeper"), by="sweeper",
                                    expected_version=run.version, state=run)
        if applied.transition is not None:
            report.cancelled.append(saga_id)

    for detector in extra_detectors:
        report.stuck.extend(detector(rt, now))
    if any(report.counts().values()):
        log.warning("sweep: %s", report.counts())
    return report
