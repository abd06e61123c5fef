"""The retry policy: how often, how long apart, and for which errors a task is retried.

The schedule is a pure function (`RetryPolicy.countdown`); the waiting itself is Celery's
(`self.retry(countdown=...)`), never a sleep in a worker.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from workflows.core.errors import DefinitionError, PermanentError, RetryableError


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a failed action or compensation is tried again. Immutable.

    A failure counts as retryable if the exception is a `RetryableError`, or an instance of
    one of `retryable` and of none of `non_retryable`; a `PermanentError` is never retried.
    """

    max_attempts: int = 3
    """Total tries, the first included. 1 means never retry."""
    initial_interval: float = 1.0
    """Seconds before the first retry (before jitter)."""
    backoff: float = 2.0
    """Each retry waits `backoff` times longer than the one before."""
    max_interval: float = 60.0
    """No wait is longer than this many seconds (before jitter)."""
    jitter: bool = True
    """Full jitter: the wait is drawn uniformly from [0, computed interval]."""
    retryable: tuple[type[BaseException], ...] = (Exception,)
    """Exception types worth retrying."""
    non_retryable: tuple[type[BaseException], ...] = ()
    """Exception types that fail at once, even when they are also `retryable`."""

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise DefinitionError(
                f"RetryPolicy.max_attempts must be an int >= 1 (got {self.max_attempts!r}); "
                "use 1 for no retries"
            )
        if self.initial_interval < 0:
            raise DefinitionError(
                f"RetryPolicy.initial_interval must be >= 0 seconds (got {self.initial_interval!r})"
            )
        if self.backoff < 1:
            raise DefinitionError(f"RetryPolicy.backoff must be >= 1 (got {self.backoff!r})")
        if self.max_interval < self.initial_interval:
            raise DefinitionError(
                f"RetryPolicy.max_interval ({self.max_interval!r}) must be >= "
                f"initial_interval ({self.initial_interval!r})"
            )
        for field in ("retryable", "non_retryable"):
            value = getattr(self, field)
            if not isinstance(value, tuple) or not all(
                isinstance(t, type) and issubclass(t, BaseException) for t in value
            ):
                raise DefinitionError(
                    f"RetryPolicy.{field} must be a tuple of exception classes (got {value!r})"
                )

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether `exc` may go away on a later attempt."""
        if isinstance(exc, PermanentError):
            return False
        if isinstance(exc, RetryableError):
            return True
        if self.non_retryable and isinstance(exc, self.non_retryable):
            return False
        return isinstance(exc, self.retryable)

    def interval(self, attempt: int) -> float:
        """The capped wait after failed attempt number `attempt` (1-based), before jitter."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1 (got {attempt})")
        return min(self.max_interval, self.initial_interval * self.backoff ** (attempt - 1))

    def countdown(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the try after failed attempt `attempt`, jitter included."""
        cap = self.interval(attempt)
        if not self.jitter:
            return cap
        return (rng or random).uniform(0.0, cap)


class RetryVerdict(Enum):
    """What follows a failed attempt."""

    RETRY = "retry"
    """Try again (after the policy's countdown)."""
    EXHAUSTED = "exhausted"
    """Retryable, but that was the policy's last attempt."""
    PERMANENT = "permanent"
    """Not retryable: trying again would fail the same way."""


def retry_verdict(policy: RetryPolicy, attempt: int, *, retryable: bool = True) -> RetryVerdict:
    """The one answer to "retry or give up" after failed attempt number `attempt` (1-based, the
    first included), for every caller: a step's failure (the engine), a lost worker (each loss
    counts as a failed attempt), an event handler's failure, the longest countdown a message may
    wait for. `retryable`: what the policy said of the error (`RetryPolicy.is_retryable`)."""
    if not retryable:
        return RetryVerdict.PERMANENT
    return RetryVerdict.RETRY if attempt < policy.max_attempts else RetryVerdict.EXHAUSTED


DEFAULT_ACTION_POLICY = RetryPolicy()
"""3 tries, 1s then 2s apart (full jitter), any exception retried."""

DEFAULT_COMPENSATION_POLICY = RetryPolicy(max_attempts=10, initial_interval=1.0, max_interval=300.0)
"""Compensations are more patient: 10 tries, up to 5 minutes apart."""
