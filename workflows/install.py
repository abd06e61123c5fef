"""Wiring a Celery app: the one place every task, consumer and queue is registered.

    app = Celery("sagas"); app.config_from_object("workflows.celeryconfig")  # or your own, from it
    runtime = workflows.install(app, modules=["tasks", "tasks.sagas"])     # in worker.py

Explicit, in one call: nothing is registered by importing `workflows`. `install` imports the
modules that declare sagas, step tasks and choreographies, builds the process's `Runtime`, and
registers on `app` a task per declared step (`orchestration.step_task`), the sweeper's periodic
task `saga.sweep` (`operations.sweeper`), a consumer task and queue per choreography service, and
the worker step that checks and announces the saga versions a worker holds (`operations.versions`).
On RabbitMQ with `SAGA_BROKER_QUORUM_QUEUES` every queue is declared a quorum queue (`runtime.brokers`).
"""
from __future__ import annotations

import importlib
from collections.abc import Sequence

from celery import Celery, Task
from kombu.entity import Queue

from workflows.choreography.declaration import choreographies
from workflows.choreography.install import install_consumers
from workflows.core.definition import registry
from workflows.core.steps import step_tasks
from workflows.operations.sweeper import sweep
from workflows.operations.versions import VersionHeartbeat
from workflows.orchestration.step_task import make_step_task
from workflows.runtime.brokers import check_sentinel, is_amqp, use_quorum_queues
from workflows.notifications.setup import webhook_of
from workflows.runtime.container import Runtime, get_runtime, set_runtime
from workflows.runtime.settings import Settings, get_settings
from workflows.runtime.sealing import check_declared
from workflows.runtime.timer_heap import CompactTimerHeap
from workflows.runtime.visibility import KOMBU_DEFAULT_VISIBILITY_TIMEOUT, check_visibility_timeout, is_redis

ORCHESTRATOR_QUEUE = "saga"
"""The queue of the orchestrator's own task (`saga.sweep`)."""


def install(app: Celery, *, settings: Settings | None = None, modules: Sequence[str] = ()) -> Runtime:
    """Import the modules that declare sagas and steps, then register every task on `app`."""
    settings = settings or get_settings()
    extra = [m.strip() for m in settings.extra_modules.split(",") if m.strip()]
    for name in [*modules, *extra]:
        importlib.import_module(name)
    broker = str(app.conf.broker_url or settings.resolved_broker_url())
    check_sentinel(broker, app.conf.broker_transport_options or {})
    _check_visibility_timeout(app, settings)
    webhook_of(settings)  # a webhook without its signing secret is refused here, not at the first failure

    runtime = Runtime(app=app, settings=settings)
    # a sensitive field with no key: refuse to start
    check_declared(runtime.sealer, registry.definitions(), choreographies.all())
    set_runtime(runtime)
    for st in step_tasks.all():
        make_step_task(app, st)
    _register_sweep(app)
    known = {q.name for q in (app.conf.task_queues or [])}
    queues = list(app.conf.task_queues or [Queue(ORCHESTRATOR_QUEUE)])
    for q in sorted(step_tasks.queues() - known - {ORCHESTRATOR_QUEUE}):
        queues.append(Queue(q))
    app.conf.task_queues = queues
    app.steps["worker"].add(CompactTimerHeap)
    # a message the workers cannot take is kept as a dead letter, never dropped (runtime.poison)
    app.conf.worker_consumer = "workflows.runtime.poison:Consumer"
    app.steps["worker"].add(VersionHeartbeat)  # checks and announces the saga versions this worker holds
    install_consumers(app)
    if settings.broker_quorum_queues and is_amqp(broker):  # every queue, the choreography's included
        app.conf.task_queues = use_quorum_queues(app, list(app.conf.task_queues))
    return runtime


def _check_visibility_timeout(app: Celery, settings: Settings) -> None:
    """On Redis, refuse a saga whose step's message may outlive the visibility timeout
    (`VisibilityTimeoutTooShort`: the worker does not start). SAGA_REDIS_VISIBILITY_CHECK=0 turns it
    off for a test rig that shortens the timeout on purpose, to see a killed worker's message soon."""
    broker = str(app.conf.broker_url or settings.resolved_broker_url())
    if not settings.redis_visibility_check or not is_redis(broker):
        return
    options = app.conf.broker_transport_options or {}
    timeout = float(options.get("visibility_timeout", KOMBU_DEFAULT_VISIBILITY_TIMEOUT))
    check_visibility_timeout(registry.definitions(), timeout)  # every version held: an older one's runs go on


def _register_sweep(app: Celery) -> Task:
    # celery ships no types, so its decorator is untyped
    @app.task(bind=True, name="saga.sweep", queue=ORCHESTRATOR_QUEUE, acks_late=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def sweep_task(self: Task) -> dict[str, int]:
        """Act on runs past a deadline: send a lost first step again, time out lost steps."""
        return sweep(get_runtime()).counts()

    return sweep_task
