"""Prometheus metrics, computed from the saga store at scrape time.

Workers run in other processes (and on other machines), so in-process counters in the API
would see nothing of what they do. The database is the record: each scrape reads it with a
few aggregate queries. What each family means:

- `sagas_started_total{saga_type}`: runs ever recorded (counter).
- `sagas_completed_total`, `sagas_compensated_total{saga_type}`: runs in those terminal states
  (counters: nothing leaves them).
- `sagas_failed{saga_type}`: runs FAILED now, a compensation stuck until an operator acts
  (a gauge: resuming or redriving moves a run out of FAILED).
- `sagas_by_state{saga_type,state}`: every run by its current state (gauge).
- `sagas_waiting{saga_type}`: runs parked on a signal now (gauge); `sagas_scheduled{saga_type}`:
  runs recorded to start later (gauge).
- `saga_waits_timed_out_total{saga_type}`: waits whose deadline passed with no signal (counter:
  the wait rows keep it).
- `saga_step_retries_total{saga_type,step,kind}`: attempts beyond the first, actions and
  compensations (counter).
- `saga_step_redeliveries_total{saga_type,step,kind}`: deliveries of a step's messages after their
  worker was lost (counted before the function ran again; a step that keeps killing its workers is
  given up at its policy's attempts).
- `saga_step_duration_seconds{saga_type,step}`: a gauge histogram of the actions that
  finished in the last `window` seconds (started_at → finished_at; query it with
  `histogram_quantile`, not `rate`: old steps leave the window).
- `saga_dead_letters{status}`: dead letters by status; OPEN ones wait for an operator.
- `saga_outbox_unsent`: events choreography handlers committed and have not sent yet (gauge). It
  should stay near 0: a handler sends right after its commit, and the sweeper sends what a
  crash in between left; a value that grows means the broker is unreachable from the workers.
- `sagas_stuck`: non-terminal runs past a deadline the sweeper has not acted on yet (a due wait,
  a due scheduled start included), and
  choreographed sagas that heard no event for longer than their deadline (the sweeper's own
  queries, each capped at 500).
- `sagas_no_progress{saga_type}`: RUNNING or COMPENSATING runs unchanged for longer than their saga's
  bound (`Saga(stuck_after=...)`, else `SAGA_STUCK_AFTER`): each needs a person (gauge; at most
  10,000 read per scrape).
- `saga_notifications{state}`: notifications of runs that needed a person, by delivery state
  (PENDING: the webhook has not taken them yet; a value that stays up means it is unreachable).
- `saga_store_up`: 1 if the store answered this scrape, 0 if not (the others are then absent).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import workflows.interfaces._api_extra  # noqa: F401  (without the `api` extra: an error that names it)
from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily,
                                    Metric)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from workflows.store.base import SagaStore

log = logging.getLogger("workflows.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
RECENT_STEPS_LIMIT = 50_000
NO_PROGRESS_LIMIT = 10_000
"""At most this many idle runs are read per scrape for `sagas_no_progress`."""
"""At most this many recent steps are read per scrape for the duration histogram."""


class SagaCollector(Collector):
    """Reads the store on every `collect()`; register it on a `CollectorRegistry`.

    `store` is called on each scrape (the runtime's store is created lazily, once per process);
    `clock` gives the scrape's time (windows, stuck runs, live workers).
    """

    def __init__(self, store: Callable[[], SagaStore], *, window: float = 3600.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 stuck_after: float = 3600.0) -> None:
        self._store = store
        self.window = window
        self.clock = clock
        self.stuck_after = stuck_after
        """The default bound of `sagas_no_progress` (`SAGA_STUCK_AFTER`)."""

    @property
    def store(self) -> SagaStore:
        return self._store()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("saga_store_up", "1 if the saga store answered this scrape")
        try:
            families = list(self._families(self.clock()))
        except SQLAlchemyError:
            log.exception("metrics: the saga store did not answer")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, now: datetime) -> Iterator[Metric]:
        yield from self._runs()
        yield from self._retries()
        yield self._durations(now)
        yield self._dead_letters()
        yield self._outbox()
        yield self._stuck(now)
        yield self._no_progress(now)
        yield self._notifications()
        yield from self._versions(now)

    def _versions(self, now: datetime) -> Iterator[Metric]:
        from workflows.operations.versions import unheld_of, versions_in

        runs = GaugeMetricFamily("saga_version_runs", "Orchestrated runs by saga version and state",
                                 labels=["saga_type", "saga_version", "state"])
        unheld = GaugeMetricFamily("saga_version_unheld_runs", "Runs in flight on a saga version no live worker "
                                   "holds, of a saga a live worker holds in another version",
                                   labels=["saga_type", "saga_version"])
        report = versions_in(self.store, now)
        missing = {(v.saga_type, v.saga_version) for v in unheld_of(report)}
        for v in report:
            for state, n in v.runs.items():
                runs.add_metric([v.saga_type, str(v.saga_version), state], n)
            unheld.add_metric([v.saga_type, str(v.saga_version)],
                              v.active if (v.saga_type, v.saga_version) in missing else 0)
        yield from (runs, unheld)

    def _runs(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("sagas_by_state", "Saga runs by current state", labels=["saga_type", "state"])
        started = CounterMetricFamily("sagas_started", "Saga runs recorded", labels=["saga_type"])
        completed = CounterMetricFamily("sagas_completed", "Saga runs that completed", labels=["saga_type"])
        compensated = CounterMetricFamily("sagas_compensated", "Saga runs rolled back cleanly",
                                          labels=["saga_type"])
        failed = GaugeMetricFamily("sagas_failed", "Saga runs FAILED now: a compensation is stuck, "
                                   "an operator must act", labels=["saga_type"])
        waiting = GaugeMetricFamily("sagas_waiting", "Saga runs parked on a signal now", labels=["saga_type"])
        scheduled = GaugeMetricFamily("sagas_scheduled", "Saga runs recorded to start later", labels=["saga_type"])
        totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for row in self.store.run_counts():
            by_state.add_metric([row.saga_type, row.state], row.count)
            totals[row.saga_type][row.state] += row.count
        for saga_type, states in sorted(totals.items()):
            started.add_metric([saga_type], sum(states.values()))
            completed.add_metric([saga_type], states["COMPLETED"])
            compensated.add_metric([saga_type], states["COMPENSATED"])
            failed.add_metric([saga_type], states["FAILED"])
            waiting.add_metric([saga_type], states["WAITING"])
            scheduled.add_metric([saga_type], states["SCHEDULED"])
        timed_out = CounterMetricFamily("saga_waits_timed_out", "Waits whose deadline passed with no signal",
                                        labels=["saga_type"])
        for saga_type, n in sorted(self.store.waits_timed_out().items()):
            timed_out.add_metric([saga_type], n)
        yield from (started, completed, compensated, failed, waiting, scheduled, timed_out, by_state)

    def _retries(self) -> Iterator[Metric]:
        retries = CounterMetricFamily("saga_step_retries", "Step attempts beyond the first",
                                      labels=["saga_type", "step", "kind"])
        redeliveries = CounterMetricFamily("saga_step_redeliveries", "Deliveries of a step's messages after a "
                                           "lost worker", labels=["saga_type", "step", "kind"])
        for r in self.store.step_retries():  # one query for both
            retries.add_metric([r.saga_type, r.step, "action"], r.actions)
            retries.add_metric([r.saga_type, r.step, "compensation"], r.compensations)
            redeliveries.add_metric([r.saga_type, r.step, "action"], r.redeliveries)
            redeliveries.add_metric([r.saga_type, r.step, "compensation"], r.compensation_redeliveries)
        yield from (retries, redeliveries)

    def _durations(self, now: datetime) -> Metric:
        seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
        for d in self.store.step_durations(now - timedelta(seconds=self.window), RECENT_STEPS_LIMIT):
            seconds[(d.saga_type, d.step)].append(d.seconds)
        family = GaugeHistogramMetricFamily(
            "saga_step_duration_seconds",
            f"Duration of the step actions that finished in the last {self.window:g}s",
            labels=["saga_type", "step"])
        for (saga_type, step), values in sorted(seconds.items()):
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([saga_type, step], buckets, gsum_value=sum(values))
        return family

    def _dead_letters(self) -> Metric:
        rows = self.store.dead_letter_counts()
        family = GaugeMetricFamily("saga_dead_letters", "Dead letters by status (OPEN: waiting for an operator)",
                                   labels=["status"])
        for status in sorted({"OPEN", "REDRIVEN", "DISCARDED", *rows}):
            family.add_metric([status], int(rows.get(status, 0)))
        return family

    def _outbox(self) -> Metric:
        family = GaugeMetricFamily("saga_outbox_unsent", "Events committed by choreography handlers, not sent yet")
        family.add_metric([], self.store.outbox_unsent())
        return family

    def stuck_ids(self, now: datetime) -> set[str]:
        """Orchestrated runs past a deadline, and choreographies that heard no event for too long."""
        ids = set(self.store.due_deadlines(now))
        ids |= {saga_id for saga_id, *_ in self.store.due_steps(now)}
        ids |= {saga_id for saga_id, *_ in self.store.due_waits(now)}
        ids |= {saga_id for saga_id, _ in self.store.due_starts(now)}
        return ids | set(self.store.stuck_choreographies(now, 500))

    def _stuck(self, now: datetime) -> Metric:
        family = GaugeMetricFamily("sagas_stuck", "Non-terminal runs past a deadline, not yet swept")
        family.add_metric([], len(self.stuck_ids(now)))
        return family

    def _no_progress(self, now: datetime) -> Metric:
        from workflows.core.definition import registry
        from workflows.notifications.idle import bound_of

        family = GaugeMetricFamily("sagas_no_progress", "RUNNING or COMPENSATING runs unchanged for longer than "
                                   "their saga's bound (stuck_after): a person must look", labels=["saga_type"])
        bounds = [b for b in (self.stuck_after, *(d.stuck_seconds for d in registry.definitions())) if b]
        counts: dict[str, int] = defaultdict(int)
        if bounds:
            for idle in self.store.runs_without_progress(now - timedelta(seconds=min(bounds)), NO_PROGRESS_LIMIT):
                bound = bound_of(registry, idle.saga_type, idle.saga_version, self.stuck_after)
                if bound and idle.updated_at < now - timedelta(seconds=bound):
                    counts[idle.saga_type] += 1
        for saga_type, n in sorted(counts.items()):
            family.add_metric([saga_type], n)
        return family

    def _notifications(self) -> Metric:
        rows = self.store.notification_counts()
        family = GaugeMetricFamily("saga_notifications", "Notifications of runs that needed a person, by delivery "
                                   "state (PENDING: the webhook has not taken them yet)", labels=["state"])
        for state in sorted({"PENDING", "DELIVERED", "LOGGED", *rows}):
            family.add_metric([state], int(rows.get(state, 0)))
        return family


def saga_registry(store: Callable[[], SagaStore], *, window: float = 3600.0,
                  clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                  stuck_after: float = 3600.0) -> CollectorRegistry:
    """A registry holding only the saga collector (what the API serves at /metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SagaCollector(store, window=window, clock=clock, stuck_after=stuck_after))
    return registry
