"""Wiring: the Celery app, the store and the settings one process runs with.

`worker.py` builds the Celery app and calls `install(app)`; every other module reaches the
app and the store through `get_runtime()`, never through Celery's implicit `current_app`.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

from workflows.store.db import dispose_engines
from workflows.core.engine import Timing
from workflows.runtime.settings import Settings, get_settings
from workflows.core.steps import step_tasks
from workflows.store.sql import SagaStore

ORCHESTRATOR_QUEUE = "saga"
DEAD_LETTER_QUEUE = "dead_letter"


@dataclass
class Runtime:
    app: Celery
    settings: Settings
    _store: SagaStore | None = field(default=None, repr=False)

    @property
    def store(self) -> SagaStore:
        if self._store is None:
            self._store = SagaStore(self.settings.resolved_database_url())
        return self._store

    @property
    def timing(self) -> Timing:
        return Timing(dispatch_grace=self.settings.dispatch_grace)

    def queue_for(self, task_name: str) -> str | None:
        st = step_tasks.get(task_name)
        return st.queue if st is not None else None


_runtime: Runtime | None = None

installers: list[Callable[[Celery, Runtime], object]] = []
"""Called at the end of `install` (the choreography registers its event consumers and queues)."""


def get_runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError(
            "the saga runtime is not installed: import your Celery app module (e.g. `import worker`) "
            "or call workflows.install(app) first")
    return _runtime


def install(app: Celery, *, settings: Settings | None = None, modules: list[str] | tuple[str, ...] = ()) -> Runtime:
    """Import the modules that declare sagas and steps, then register every task on `app`."""
    global _runtime
    settings = settings or get_settings()
    extra = [m.strip() for m in settings.extra_modules.split(",") if m.strip()]
    for name in [*modules, *extra]:
        importlib.import_module(name)

    from workflows.orchestration import step_task as orchestrator

    _runtime = Runtime(app=app, settings=settings)
    orchestrator.register_tasks(app)
    known = {q.name for q in (app.conf.task_queues or [])}
    queues = list(app.conf.task_queues or [Queue(ORCHESTRATOR_QUEUE)])
    for q in sorted(step_tasks.queues() - known - {ORCHESTRATOR_QUEUE}):
        queues.append(Queue(q))
    app.conf.task_queues = queues
    from workflows.runtime.timer_heap import CompactTimerHeap

    app.steps["worker"].add(CompactTimerHeap)
    for installer in installers:
        installer(app, _runtime)
    return _runtime


@worker_process_init.connect
def _forget_parent_connections(**_: object) -> None:
    # A forked pool process must not share the parent's database connections.
    dispose_engines()
    if _runtime is not None:
        _runtime._store = None
