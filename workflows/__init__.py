"""Saga orchestration on Celery: declare sagas, run them, query every transition.

    from workflows import Saga, Step, RetryPolicy, step_task, start_saga, get_saga
"""
from workflows.operations.client import get_saga, list_sagas, start_saga, wait_for
from workflows.core.definition import Saga, Step, register_saga, registry
from workflows.core.engine import RunStatus, StepStatus
from workflows.core.errors import (DeadLetterNotFound, DefinitionError, IdempotencyConflict, InvalidInput, InvalidOperation,
                     PermanentError, RetryableError, SagaError, SagaNotFound, StepNotFound, UnknownSaga)
from workflows.core.retry import RetryPolicy
from workflows.runtime.container import get_runtime, install
from workflows.core.steps import StepContext, step_task
from workflows.core.views import DeadLetterView, EventView, SagaView, StepView
from workflows.choreography import Choreography, EventContext, publish  # noqa: E402  (last: it builds on the above)

__all__ = [
    "Choreography", "EventContext", "publish",
    "DeadLetterNotFound", "DeadLetterView", "DefinitionError", "EventView", "IdempotencyConflict",
    "InvalidInput", "InvalidOperation", "PermanentError", "RetryPolicy", "RetryableError", "RunStatus",
    "Saga", "SagaError", "SagaNotFound", "SagaView", "Step", "StepContext", "StepNotFound", "StepStatus", "StepView",
    "UnknownSaga", "get_runtime", "get_saga", "install", "list_sagas", "register_saga", "registry",
    "start_saga", "step_task", "wait_for",
]
