"""The runtime: what one process runs with (Celery app, settings, store, dispatcher, clock, ids).

`workflows.install(app)` (in `worker.py`) builds the process's `Runtime` and registers the tasks;
every other module reaches the store and the decision loop through `get_runtime()`, never through
Celery's implicit `current_app`. Tests build a `Runtime` of their own (a SQLite store and a
`RecordingDispatcher`, a clock they move) and `activate` it.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery.signals import worker_process_init

from workflows.core.state import IdSource, Timing
from workflows.notifications.notifier import Notifier
from workflows.notifications.setup import notifier_from
from workflows.projections.base import Projections
from workflows.projections.setup import from_settings
from workflows.runtime.dispatch import CeleryDispatcher, Dispatcher
from workflows.runtime.loop import DecisionLoop
from workflows.runtime.sealing import Sealer
from workflows.runtime.settings import Settings
from workflows.runtime.tracing import Tracing, tracing_for
from workflows.store import SagaStore, open_store
from workflows.store.db import dispose_engines


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Runtime:
    app: Any
    """The Celery app (None in a process that only reads, or in the in-process test tier)."""
    settings: Settings
    clock: Callable[[], datetime] = utcnow
    ids: IdSource = new_id
    _store: SagaStore | None = field(default=None, repr=False)
    _dispatcher: Dispatcher | None = field(default=None, repr=False)
    _projections: Projections | None = field(default=None, repr=False)
    _tracing: Tracing | None = field(default=None, repr=False)
    _notifier: Notifier | None = field(default=None, repr=False)
    _sealer: tuple[Sealer | None] | None = field(default=None, repr=False)

    @property
    def store(self) -> SagaStore:
        if self._store is None:  # created lazily: a forked pool process makes its own
            self._store = open_store(self.settings.resolved_database_url())
        return self._store

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            if self.app is None:
                raise RuntimeError("this runtime has no Celery app to publish with: give it a dispatcher")
            self._dispatcher = CeleryDispatcher(self.app, self.tracing)
        return self._dispatcher

    @property
    def projections(self) -> Projections:
        """The after-commit projections of the settings (`workflows.projections`); built once per process."""
        if self._projections is None:
            self._projections = from_settings(self.settings, self.notifier)
        return self._projections

    @property
    def notifier(self) -> Notifier:
        """Where runs that need a person are announced (`workflows.notifications`); built once per process."""
        if self._notifier is None:
            self._notifier = notifier_from(self.settings, lambda: self.store, self.clock)
        return self._notifier

    @property
    def tracing(self) -> Tracing:
        """OpenTelemetry spans with `SAGA_TRACING=otel`; `NO_TRACING` (nothing imported) otherwise."""
        return self._tracing if self._tracing is not None else tracing_for(self.settings)

    @property
    def sealer(self) -> Sealer | None:
        """The sealed fields' keys of the settings (`runtime.sealing`); None when none is configured."""
        if self._sealer is None:
            self._sealer = (Sealer.from_settings(self.settings),)
        return self._sealer[0]

    @property
    def timing(self) -> Timing:
        return Timing(dispatch_grace=self.settings.dispatch_grace)

    @property
    def loop(self) -> DecisionLoop:
        return DecisionLoop(self.store, self.dispatcher, clock=self.clock, ids=self.ids, timing=self.timing,
                            projections=self.projections, tracing=self.tracing)


_runtime: Runtime | None = None


def get_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError(
            "the saga runtime is not installed: import your Celery app module (e.g. `import worker`) "
            "or call workflows.install(app) first")
    return _runtime


def set_runtime(rt: Runtime | None) -> Runtime | None:
    """Make `rt` the process's runtime; returns the one it replaces."""
    global _runtime
    old, _runtime = _runtime, rt
    return old


@contextmanager
def activate(rt: Runtime) -> Iterator[Runtime]:
    """`rt` is the process's runtime inside the block (tests)."""
    old = set_runtime(rt)
    try:
        yield rt
    finally:
        set_runtime(old)


@worker_process_init.connect  # type: ignore[untyped-decorator]  # celery ships no types
def _forget_parent_connections(**_: object) -> None:
    # A forked pool process must not share the parent's database connections.
    dispose_engines()
    if _runtime is not None:
        _runtime._store = None
        _runtime._projections = None  # a Kafka producer is not fork-safe: each process builds its own
