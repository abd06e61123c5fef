"""Saga orchestration on Celery: declare sagas, run them, query every transition.

    from workflows import Saga, Step, Parallel, ForEach, Wait, Child, RetryPolicy, step_task
    from workflows import start_saga, get_saga, signal
    from workflows import aio          # the same, awaited: await aio.start_saga(...), aio.wait_for(...)

Importing `workflows` registers nothing and connects to nothing: `workflows.install(app)` (in the
deployment's `worker.py`) wires a Celery app. The layers, bottom up: `core` (declarations, the
pure engine), `store` (the only writer of the saga tables), `runtime` (the decision loop,
dispatch), `orchestration` and `choreography` (the Celery tasks and consumers), `operations`
(starting, operator actions, dead letters, the sweeper), `interfaces` (API, CLI, metrics).
"""
from workflows import aio
from workflows.choreography import Choreography, EventContext, publish
from workflows.core.definition import (Child, ForEach, OnEvent, Parallel, Saga, Step, Wait, child_id, register_saga,
                                       registry)
from workflows.core.errors import (DeadLetterNotFound, DefinitionError, IdempotencyConflict, IncompatibleVersion,
                                   InvalidInput, InvalidOperation, NotWaiting, PermanentError, RetryableError,
                                   SagaError, SagaNotFound, StepNotFound, StepTypeError, UnknownSaga,
                                   UnknownSagaVersion, VersionConflict)
from workflows.core.retry import RetryPolicy
from workflows.core.state import RunStatus, StepStatus
from workflows.core.steps import StepContext, StepError, step_task
from workflows.core.views import DeadLetterView, EventView, SagaView, StepView
from workflows.install import install
from workflows.operations.client import get_saga, list_sagas, start_saga, wait_for
from workflows.operations.signals import signal
from workflows.operations.upgrade import UpgradeReport, check_upgrade
from workflows.runtime.container import get_runtime

__all__ = [
    "aio", "Choreography", "EventContext", "publish", "Child", "child_id",
    "DeadLetterNotFound", "DeadLetterView", "DefinitionError", "EventView", "ForEach", "IdempotencyConflict",
    "InvalidInput", "InvalidOperation", "NotWaiting", "Parallel", "PermanentError", "RetryPolicy", "RetryableError",
    "RunStatus", "Saga", "SagaError", "SagaNotFound", "SagaView", "Step", "StepContext", "StepError", "StepNotFound",
    "StepStatus", "StepTypeError", "StepView",
    "UnknownSaga", "UnknownSagaVersion", "VersionConflict", "IncompatibleVersion",
    "get_runtime", "get_saga", "install", "list_sagas", "register_saga", "registry",
    "start_saga", "step_task", "wait_for",
    "OnEvent", "Wait", "signal", "UpgradeReport", "check_upgrade",
]
