"""The sweeper: no run is stranded.

A non-terminal run always has a message in flight or a deadline. Run periodically by celery
beat (`saga.sweep`) and on demand by `sagas sweep`, it acts on every deadline that passed:
- the first step of a run nothing has reported on since `start_saga` recorded it: its message
  may never have been published (the caller died, the broker was down): send it again, once;
- an action past its deadline (never picked up, or its worker vanished): TIMED_OUT, compensate;
- a compensation past its deadline: a failed attempt (retried, or dead-lettered when exhausted);
- a run past its saga-level deadline: cancelled, compensated (a parked run too);
- a wait past its deadline with no signal (`due_waits`, an indexed range however many runs are
  parked): timed out, as its `on_timeout` says;
- a SCHEDULED run whose start time came (`due_starts`): started, its first stage published;
- a dead letter committed and never copied to the broker (its writer died first): sent;
- a child step whose order or report a crash lost (`_child_order`): a settled child reported to its
  parent, a COMPLETED child of a compensating step compensated, a running child of a cancelled
  parent cancelled;
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
from datetime import datetime, timedelta

from workflows.choreography.operations import sweep_choreographies
from workflows.core.definition import Saga, definition_of, registry
from workflows.core.errors import SagaNotFound, UnknownSaga
from workflows.core.state import (STARTED_BY, ActionTimedOut, Cancel, ChildFinished, Compensate, CompensationFailed,
                                  ErrorInfo, Order, Outcome, Redispatch, Resume, RunState, RunStatus, Started,
                                  StepStatus, WaitTimedOut)
from workflows.notifications.idle import record_idle_runs
from workflows.notifications.notices import WORKER_LOST_REASON
from workflows.operations import versions
from workflows.runtime.container import Runtime
from workflows.runtime.loop import DecisionLoop
from workflows.store.base import ChildLink

log = logging.getLogger("workflows.sweeper")

WAIT_SWEEPER = "sweeper:wait"
"""`caused_by` of a wait's timeout (which may dispatch the next stage: on_timeout=<default>)."""
FRESH_DISPATCHERS = (STARTED_BY, "signal:", WAIT_SWEEPER)
"""`caused_by` prefixes of a version that dispatched steps nothing has reported on since: the start,
a signal, a wait's timeout. Their first messages may never have been published (the writer died
between commit and publish), so at their deadline they are sent again, once, not timed out."""


@dataclass
class SweepReport:
    redispatched: list[str] = field(default_factory=list)
    timed_out: list[str] = field(default_factory=list)
    compensations_retried: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    waits_timed_out: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """SCHEDULED runs started."""
    dead_letters_sent: list[str] = field(default_factory=list)
    projections_sent: list[str] = field(default_factory=list)
    """Ids of projection records (Kafka events, read model updates) a crash or a sink down left, sent."""
    children: list[str] = field(default_factory=list)
    """`<parent id>:<step>` of child steps whose lost order or report was applied."""
    stuck: list[str] = field(default_factory=list)
    """Choreographed sagas whose last event is older than their deadline."""
    parked_redispatched: list[str] = field(default_factory=list)
    """Steps a worker parked (no worker took their message), dispatched again."""
    unheld: list[str] = field(default_factory=list)
    """`<saga>:v<version>` of the versions with runs in flight that no live worker holds."""
    notified: list[str] = field(default_factory=list)
    """Notifications recorded by this sweep: runs without progress past their bound (`no_progress`)."""
    notifications_delivered: list[str] = field(default_factory=list)
    """Notifications the webhook took in this sweep (retries of earlier failed attempts included)."""

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
            saga = definition_of(run)
        except UnknownSaga:  # another worker's sweep, one that holds the version, decides it
            log.warning("not sweeping %s: this process does not hold version %d of %s", saga_id, run.saga_version,
                        run.saga_type, extra={"saga_id": saga_id})
            continue
        if run.caused_by is not None and run.caused_by.startswith(FRESH_DISPATCHERS):
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
            outcome = ActionTimedOut(step, WORKER_LOST_REASON)  # a `lost_worker` notification
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
        applied = loop.apply(definition_of(run), saga_id,
                             Cancel("saga deadline passed", who="sweeper"),
                             by="sweeper", expected_version=run.version, state=run)
        if applied.transition is not None:
            report.cancelled.append(saga_id)

    # decided at `now`, the time the waits and starts were found due at (the engine checks a wait's
    # deadline against it)
    at_now = DecisionLoop(store, loop.dispatcher, clock=lambda: now, ids=rt.ids, timing=rt.timing,
                          projections=loop.projections, tracing=rt.tracing)
    for saga_id, _type, wait in store.due_waits(now):
        run = store.load(saga_id)
        if (known := _known(run)) is None:
            continue
        applied = at_now.apply(known, saga_id, WaitTimedOut(wait), by=WAIT_SWEEPER,
                             expected_version=run.version, state=run)
        if applied.transition is not None:
            report.waits_timed_out.append(f"{saga_id}:{wait}")

    for saga_id, _type in store.due_starts(now):
        run = store.load(saga_id)
        if (known := _known(run)) is None:
            continue
        # by "start": nothing has reported on it yet, so a lost first message is sent again
        applied = at_now.apply(known, saga_id, Started(), by=STARTED_BY,
                             expected_version=run.version, state=run)
        if applied.transition is not None:
            report.started.append(saga_id)

    for link in store.child_links(now - timedelta(seconds=rt.timing.dispatch_grace)):
        order = _child_order(rt, link)
        owed = loop.deliver(order, by="sweeper") if order is not None else None
        if owed is not None and owed.transition is not None:
            report.children.append(f"{link.parent_id}:{link.step}")

    try:
        report.dead_letters_sent.extend(loop.resend_dead_letters())
    except Exception as e:  # the broker is down: the next sweep tries again
        log.warning("dead letters not sent to the broker: %s", e)
    try:  # records a crash or a sink that was down left pending (`workflows.projections`)
        report.projections_sent.extend(loop.projections.resend(store, now, rt.settings.projection_grace))
    except Exception as e:  # the database: the next sweep tries again
        log.warning("projection records not sent: %s", e)
    try:  # runs that need a person: idle past their bound; and the webhook's due retries
        report.notified.extend(record_idle_runs(store, rt.notifier, registry, default=rt.settings.stuck_after,
                                                now=now))
        report.notifications_delivered.extend(rt.notifier.deliver_due(now))
    except Exception as e:  # the database: the next sweep tries again
        log.warning("notifications not recorded or delivered: %s", e)
    report.stuck.extend(sweep_choreographies(rt, now))
    if any(report.counts().values()):
        log.warning("sweep: %s", report.counts())
    return report


def _known(run: RunState) -> Saga | None:
    """The definition that decides `run` (`definition_of`); None (logged) if this process does not
    hold it: its runs are left to a sweeper that does, and the others are swept all the same."""
    try:
        return definition_of(run)
    except UnknownSaga:
        log.error("cannot sweep saga of unknown type %s", run.saga_type, extra={"saga_id": run.saga_id})
        return None


def _child_order(rt: Runtime, link: ChildLink) -> Order | None:
    """What a child step waiting for over the grace period is owed, if anything: the order or the
    report whose delivery a crash (or a database error) lost after its transition committed."""
    step, child, parent = StepStatus(link.step_status), RunStatus(link.child_state), RunStatus(link.parent_state)
    settled = child in (RunStatus.COMPLETED, RunStatus.COMPENSATED)
    if (step == StepStatus.RUNNING and settled) or (step == StepStatus.COMPENSATING and child == RunStatus.COMPENSATED):
        run = rt.store.load(link.child_id)
        return Order(link.parent_id, ChildFinished(link.step, link.child_id, run.status, run.results(),
                                                   run.failure_reason))
    if step == StepStatus.COMPENSATING and child == RunStatus.COMPLETED:
        return Order(link.child_id, Compensate("its parent is compensating (sent again by the sweeper)",
                                               who=f"parent {link.parent_id}"))
    if step == StepStatus.RUNNING and parent == RunStatus.COMPENSATING and child == RunStatus.RUNNING:
        return Order(link.child_id, Cancel("its parent was cancelled (sent again by the sweeper)",
                                           who=f"parent {link.parent_id}"))
    return None


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
        applied = loop.apply(definition_of(run), p.saga_id,
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
