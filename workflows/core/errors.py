"""Every error the saga system raises on purpose.

Errors a *caller* sees (bad declaration, bad input, unknown saga, idempotency conflict)
derive from `SagaError`. Errors a *step* raises to steer the retry policy are
`PermanentError` (never retried) and `RetryableError` (always retried while attempts last).
"""
from __future__ import annotations

from typing import Any


class SagaError(Exception):
    """Base class of the errors this package raises to its callers."""


class DefinitionError(SagaError, ValueError):
    """A saga, step or retry policy was declared wrongly. The message says what to change."""


class InvalidInput(SagaError, ValueError):
    """A saga's input failed validation. Nothing was written."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class UnknownSaga(SagaError, LookupError):
    """No saga definition is registered under that name."""


class UnknownSagaVersion(UnknownSaga):
    """The saga is registered, but not in the version asked for (a worker deployed without it)."""

    def __init__(self, message: str, name: str, version: int) -> None:
        super().__init__(message)
        self.name = name
        self.version = version


class VersionConflict(DefinitionError):
    """A saga version was declared with another shape than the one registered (or recorded) under
    the same name and version: bump the version to change a shape."""


class SagaNotFound(SagaError, LookupError):
    """No saga run has that id."""


class IdempotencyConflict(SagaError):
    """The idempotency key was already used to start a saga with different content."""

    def __init__(self, key: str, saga_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used by saga {saga_id} with a different "
            "saga type or input; use a new key for a different request"
        )
        self.key = key
        self.saga_id = saga_id


class InvalidOperation(SagaError):
    """An operator action does not apply to the saga or dead letter in its current state."""


class NotWaiting(InvalidOperation):
    """A signal for a run that is not waiting for it (and will not: its waits are over, it is
    compensating or terminal, or its saga has no wait for that signal). Nothing was changed."""


class SignalConflict(InvalidOperation):
    """A signal's idempotency key was already used on that run for another signal or payload."""


class IncompatibleVersion(InvalidOperation):
    """A run cannot move to the version asked for: its shape differs where the run has progressed."""


class DeadLetterNotFound(SagaError, LookupError):
    """No dead letter has that id."""


class StepNotFound(SagaError, LookupError):
    """The saga has no step of that name."""


class PermanentError(Exception):
    """Raise from a step to fail it at once: the error will not go away by retrying."""


class StepTypeError(PermanentError):
    """A typed step's value does not fit its model: the input it was to receive, or the result it
    returned. Permanent, never retried: the same input gives the same shape again. `errors` name
    the fields (`loc`), as a 422 does."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class RetryableError(Exception):
    """Raise from a step to ask for a retry even if the policy would not retry the cause."""


class SagaIdTaken(SagaError):
    """`start_saga(saga_id=...)` named an id that is already used."""


class DeadLetterHandled(InvalidOperation):
    """The dead letter a transition was to resolve is no longer OPEN: another operator handled it."""


class ConcurrentTransition(Exception):
    """Another writer changed the run between our read and our write (caught by the version)."""


class VisibilityTimeoutTooShort(DefinitionError):
    """A step's message may stay unacknowledged on Redis longer than the broker's visibility
    timeout (a retry's countdown, then its time limit): Redis would hand a second copy of the same
    attempt to another worker while the first still waits or runs."""

    def __init__(self, saga: str, step: str, kind: str, needed: float, visibility_timeout: float, why: str) -> None:
        super().__init__(
            f"saga {saga!r}, step {step!r} ({kind}): a message may stay unacknowledged {needed:g}s ({why}), "
            f"longer than the Redis visibility timeout of {visibility_timeout:g}s; Redis would deliver a second "
            f"copy of the same attempt while the first still waits or runs. Raise SAGA_REDIS_VISIBILITY_TIMEOUT "
            f"above {needed:g}, or lower the step's timeout or its retry policy's max_interval")
        self.saga, self.step, self.kind = saga, step, kind
        self.needed, self.visibility_timeout = needed, visibility_timeout


class SealingError(SagaError):
    """Sensitive fields cannot be sealed or opened: no key configured, a key that does not parse,
    an envelope naming a key this process does not hold, or one that does not decrypt."""
