"""Versions in operation: what workers hold, what runs are on, and moving a run to a newer version.

- Every worker announces the saga versions it holds (`saga_workers`), when it starts and every
  `HEARTBEAT_INTERVAL` seconds (`VersionHeartbeat`, a worker step `install` adds); it first records
  the shape of each version in `saga_definitions` and refuses to start (`VersionConflict`, saying
  what changed) if one is recorded there with another shape.
- `version_report` lists each saga's versions: fingerprint, runs by state, live workers holding it
  (`sagas versions`, `GET /sagas/versions`, the metrics, the sweeper).
- `migrate` moves a FAILED or stuck run to a newer, compatible version (an operator action, on
  the run's record with who and why; refused with the reason otherwise).
"""
from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from typing import Any

from celery import bootsteps

from workflows.core.definition import definition_of, registry
from workflows.core.errors import ConcurrentTransition, IncompatibleVersion, VersionConflict
from workflows.core.state import RunStatus
from workflows.core.shape import conflict_message
from workflows.core.versions import migrate as migrate_transition
from workflows.core.views import SagaView, VersionView
from workflows.runtime.container import Runtime, get_runtime
from workflows.store.base import RecordedDefinition, WorkerVersions

log = logging.getLogger("workflows.versions")

HEARTBEAT_INTERVAL = 10.0
"""Seconds between two heartbeats of a worker."""
LIVE_FOR = 3 * HEARTBEAT_INTERVAL
"""A worker whose heartbeat is older than this is gone."""


def held() -> dict[str, dict[str, str]]:
    """What this process holds: {saga: {version: fingerprint}}."""
    return {name: {str(v): registry.get(name, v).fingerprint for v in versions}
            for name, versions in registry.held().items()}


def check_definitions(rt: Runtime) -> None:
    """Record this process's versions' shapes; `VersionConflict` if one is recorded with another."""
    defs = [RecordedDefinition(name, v, registry.get(name, v).fingerprint, registry.get(name, v).shape)
            for name, versions in registry.held().items() for v in versions]
    conflicts = rt.store.record_definitions(defs, rt.clock())
    if conflicts:
        raise VersionConflict(" | ".join(
            conflict_message(old.saga_type, old.saga_version, old.shape, new.shape, "recorded in the database")
            for old, new in conflicts))


def announce(rt: Runtime, name: str, *, check: bool = False) -> None:
    """Write (or refresh) worker `name`'s heartbeat; with `check`, `check_definitions` first."""
    if check:
        check_definitions(rt)
    rt.store.announce_worker(name, held(), rt.clock())


def worker_name(hostname: str) -> str:
    return f"{hostname}:{os.getpid()}"


class VersionHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no types: the base is Any
    """Worker step: check and announce the versions this worker holds when it starts, refresh the
    heartbeat every `HEARTBEAT_INTERVAL` seconds, forget it when the worker stops."""

    requires = ("celery.worker.components:Hub",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.name = ""
        self._stop = threading.Event()

    def start(self, worker: Any) -> None:
        rt = get_runtime()
        self.name = worker_name(worker.hostname)
        announce(rt, self.name, check=True)  # a VersionConflict stops the worker here, before it consumes
        hub = getattr(worker, "hub", None)
        if hub is not None:
            hub.call_repeatedly(HEARTBEAT_INTERVAL, self._beat)
        else:  # a pool without the event loop (solo, threads): a timer thread of its own
            threading.Thread(target=self._beat_forever, name="saga-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        try:
            announce(get_runtime(), self.name)
        except Exception as e:  # the database is down: the next beat tries again
            log.warning("worker heartbeat not written: %s", e)

    def _beat_forever(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self._beat()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self.name:
            try:
                get_runtime().store.forget_worker(self.name)
            except Exception as e:  # its heartbeat ages out instead
                log.warning("worker heartbeat not removed: %s", e)


def version_report(rt: Runtime, now: datetime | None = None, *, active_only: bool = False) -> list[VersionView]:
    """Every (saga, version) registered here, recorded by a worker or with runs on it, oldest first
    (`active_only`: counting only the runs not terminal, the cheaper read the sweeper makes)."""
    return versions_in(rt.store, now or rt.clock(), active_only=active_only)


def versions_in(store: WorkerVersions, now: datetime, *, active_only: bool = False) -> list[VersionView]:
    """`version_report` read from `store` at `now`."""
    workers = store.live_workers(now - timedelta(seconds=LIVE_FOR))
    recorded = {(d.saga_type, d.saga_version): d.fingerprint for d in store.recorded_definitions()}
    runs: dict[tuple[str, int], dict[str, int]] = {}
    for c in store.version_counts(active_only=active_only):
        runs.setdefault((c.saga_type, c.saga_version), {})[c.state] = c.count
    keys = set(recorded) | set(runs) | {(n, v) for n, vs in registry.held().items() for v in vs}
    out = []
    for name, version in sorted(keys):
        here = registry.has(name, version)
        fingerprint = registry.get(name, version).fingerprint if here else recorded.get((name, version))
        holders = [w.name for w in workers if str(version) in w.versions.get(name, {})]
        out.append(VersionView(name, version, fingerprint, dict(sorted(runs.get((name, version), {}).items())),
                               holders, here))
    return out


def unheld(rt: Runtime, now: datetime | None = None) -> list[VersionView]:
    """Versions with runs not terminal that no live worker holds, of saga types a live worker
    holds in another version (a version retired too early, or not deployed yet)."""
    return unheld_in(rt.store, now or rt.clock())


def unheld_in(store: WorkerVersions, now: datetime) -> list[VersionView]:
    """Only saga types some live worker announces (in another version): of a type no worker
    announces at all, the heartbeats say nothing (its workers may predate them)."""
    return unheld_of(versions_in(store, now))


def unheld_of(report: list[VersionView]) -> list[VersionView]:
    """The versions of `report` that `unheld` returns."""
    announced = {v.saga_type for v in report if v.workers}
    return [v for v in report if v.active and not v.workers and v.saga_type in announced]


def migrate(saga_id: str, to_version: int, *, reason: str, who: str = "operator") -> SagaView:
    """Move a FAILED, COMPENSATING or RUNNING (stuck, or parked: its version is held by no worker)
    run to the newer version `to_version` of its saga, when compatible (see
    `core.versions.incompatibility`); its steps in flight are dispatched again under it. Recorded
    in the history (`SagaMigrated`, with who and why); a refusal too (`OperatorActionRefused`)."""
    from workflows.operations.actions import refused

    rt = get_runtime()
    run = rt.store.load(saga_id)
    try:
        old = definition_of(run)
        new = registry.get(run.saga_type, to_version)
        t = migrate_transition(run, old, new, rt.clock(), rt.ids, who, reason, rt.timing)
    except (IncompatibleVersion, LookupError) as e:
        raise refused(saga_id, "migrate", who, reason, None, str(e), IncompatibleVersion) from None
    now = rt.clock()
    t = rt.projections.derive(t, now)  # its after-commit projections' records, as for every transition
    try:
        rt.store.commit(t, by=f"operator:{who}", now=now)
    except ConcurrentTransition:
        raise refused(saga_id, "migrate", who, reason, None,
                      f"saga {saga_id} changed while the migration was being decided; look at it again") from None
    rt.loop.publish(t)
    if run.status == RunStatus.FAILED:
        log.warning("saga %s moved to version %d; it is still FAILED: resume it", saga_id, to_version)
    return rt.store.get(saga_id)
