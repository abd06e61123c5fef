"""The sweeper: no run is stranded.

A non-terminal run always has a message in flight or a deadline. Run periodically by celery
beat (`saga.sweep`) and on demand by `sagas sweep`, it acts on every deadline that passed:
- the first step of a run nothing has reported on since `start_saga` recorded it: its message
  may never have been published (the caller died, the broker was down): send it again, once;
- an action past its deadline (never picked up, or its worker vanished): TIMED_OUT, compensate;
- a compensation past its deadline: a failed attempt (retried, or dead-lettered when exhausted);
- a run past its saga-level deadline: cancelled, compensated;
- a dead letter committed and never copied to the broker (its writer died first): sent;
- the choreographies' part (`choreography.operations.sweep_choreographies`);
- versions: a run is decided on the version it started with; a due step of a version this process
  does not hold is left to a sweep on a worker that holds it, one of a version no live worker holds
  is not timed out (it is reported: `unheld`), and a step a worker parked (`saga_parked_steps`: no
  worker took its message) is dispatched again at the next sweep once a live worker holds its version.
Every action is one pass of the decision loop, version-checked like a step's own report, so a
sweeper racing a late result changes the run once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from workflows.choreography.operations import sweep_choreographies
from workflows.core.definition import registry
from workflows.core.errors import SagaNotFound, UnknownSaga
from workflows.core.state import (STARTED_BY, ActionTimedOut, Cancel, CompensationFailed, ErrorInfo, Outcome,
                                  Redispatch, Resume, StepStatus)
from workflows.operations import versions
from workflows.runtime.container import Runtime

log = logging.getLogger("workflows.sweeper")


@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    compensations_retried: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    dead_letters_sent: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    """Choreographed sagas whose last event is older than their deadline."""
    parked_redispatched: list[str] = field(default_factory=list)
    """Steps a worker parked (no worker took their message), dispatched again."""
    unheld: list[str] = field(default_factory=list)
    """`<saga>:v<version>` of the versions with runs in flight that no live worker holds."""

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.__dict__.items()}


def sweep(rt: Runtime, now: datetime | None = None) -> SweepReport:
    """Act on every deadline passed at `now` (default: the runtime's clock)."""
    now = now or rt.clock()
    store, loop = rt.store, rt.loop
    report = SweepReport()

    version_report = versions.version_report(rt, now, active_only=True)
    unheld = versions.unheld_of(version_report)
    unheld_keys = {(v.saga_type, v.saga_version) for v in unheld}
    for v in unheld:
        log.error("%d run(s) of %s version %d are in flight and no live worker holds that version: deploy a "
                  "worker with it (or `sagas move` them to a newer version)", v.active, v.saga_type, v.saga_version)
        report.unheld.append(f"{v.saga_type}:v{v.saga_version}")

    held_keys = {(v.saga_type, v.saga_version) for v in version_report if v.workers}
    parked = _redispatch_parked(rt, held_keys, report)

    never_heard: set[str] = set()
    """Runs nothing reported on since their start: every step of their first stage may be unsent."""
    for saga_id, saga_type, step, _version in store.due_steps(now):
        if saga_type not in registry:
            log.error("cannot sweep saga of unknown type %s", saga_type, extra={"saga_id": saga_id})
            continue
        run = store.load(saga_id)
        if (run.saga_type, run.saga_version) in unheld_keys:
            continue  # no worker could run what a decision would send: wait for one (reported above)
        try:
            saga = registry.get(run.saga_type, run.saga_version)
        except UnknownSaga:  # another worker's sweep, one that holds the version, decides it
            log.warning("not sweeping %s: this process does not hold version %d of %s", saga_id, run.saga_version,
                        run.saga_type, extra={"saga_id": saga_id})
            continue
        if run.caused_by == STARTED_BY:
            never_heard.add(saga_id)
        s = run.step(step)
        if s.deadline_at is None or s.deadline_at >= now:
            continue  # reported on, or dispatched again, since the query: not due any more
        if (saga_id, s.task_id) in parked:
            continue  # it never ran: dispatched again (above) once a live worker holds its version
        outcome: Outcome
        if s.status == StepStatus.RUNNING and saga_id in never_heard and s.attempts == 0:
            outcome = Redispatch(step, "no result before the step's deadline, and none since the saga was created "
                                       "(its first message may never have been published)")
            bucket = report.redispatched
        elif s.status == StepStatus.RUNNING:
            outcome = ActionTimedOut(step, "no result before the step's deadline (message lost or worker gone)")
            bucket = report.timed_out
        else:
            policy = saga.step(step).compensation_retry
            outcome = CompensationFailed(
                step, ErrorInfo("DeadlineExceeded", "no result before the compensation's deadline"), True,
                policy.countdown(s.compensation_attempts + 1))
            bucket = report.compensations_retried
        # decided on the run as just read (the due query's version may be older: a group's other
        # branch may have reported meanwhile), and committed only on that version
        applied = loop.apply(saga, saga_id, outcome, by="sweeper", state=run, expected_version=run.version)
        if applied.transition is not None:
            bucket.append(f"{saga_id}:{step}")

    for saga_id in store.due_deadlines(now):
        run = store.load(saga_id)
        if not registry.has(run.saga_type, run.saga_version):
            continue  # a sweep on a worker that holds its version cancels it
        applied = loop.apply(registry.get(run.saga_type, run.saga_version), saga_id,
                             Cancel("saga deadline passed", who="sweeper"),
                             by="sweeper", expected_version=run.version, state=run)
        if applied.transition is not None:
            report.cancelled.append(saga_id)

    try:
        report.dead_letters_sent.extend(loop.resend_dead_letters())
    except Exception as e:  # the broker is down: the next sweep tries again
        log.warning("dead letters not sent to the broker: %s", e)
    report.stuck.extend(sweep_choreographies(rt, now))
    if any(report.counts().values()):
        log.warning("sweep: %s", report.counts())
    return report


def _redispatch_parked(rt: Runtime, held: set[tuple[str, int]], report: SweepReport) -> set[tuple[str, str]]:
    """Dispatch again every parked step whose version a live worker holds (and this process too:
    the decision needs the definition); forget the parked rows whose run moved on. Returns the
    (saga id, task id) still parked."""
    store, loop = rt.store, rt.loop
    still: set[tuple[str, str]] = set()
    for p in store.parked_steps():
        try:
            run = store.load(p.saga_id)
            s = run.step(p.step)
        except (SagaNotFound, KeyError):
            store.unpark(p.saga_id, p.task_id)
            continue
        if s.task_id != p.task_id or s.status not in (StepStatus.RUNNING, StepStatus.COMPENSATING) \
                or run.status.terminal or run.saga_version != p.saga_version:
            store.unpark(p.saga_id, p.task_id)  # dispatched since, moved to another version, or ended
            continue
        if (p.saga_type, p.saga_version) not in held or not registry.has(p.saga_type, p.saga_version):
            still.add((p.saga_id, p.task_id))
            continue
        applied = loop.apply(registry.get(p.saga_type, p.saga_version), p.saga_id,
                             Resume(p.step, "its message was parked: no worker held the run's version, one does now",
                                    who="sweeper"), by="sweeper", state=run, expected_version=run.version)
        if applied.transition is not None:
            store.unpark(p.saga_id, p.task_id)
            report.parked_redispatched.append(f"{p.saga_id}:{p.step}")
        elif applied.stale:
            still.add((p.saga_id, p.task_id))  # the run changed meanwhile: the next sweep looks again
        else:  # nothing to resume (an action left in flight while the run compensates): its deadline decides
            store.unpark(p.saga_id, p.task_id)
    return still
