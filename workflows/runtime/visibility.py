"""Countdowns that cannot outlive Redis's visibility timeout.

kombu's Redis transport keeps a message a worker took, and has not acknowledged, in a hash; after
`visibility_timeout` seconds it puts it back on its queue for any worker (that is how a dead
worker's message comes back). Step messages are acknowledged late, after their transition: a
message is unacknowledged while its retry waits for its countdown (Celery's retry waits in the
worker that took it) and while its function runs, up to its hard time limit. If that can last
longer than the visibility timeout, Redis hands a second copy of the same attempt to another
worker while the first is still there: two copies of one attempt at once (issue 20).

`check_visibility_timeout` refuses such a declaration when the worker is installed, naming the
saga, the step and both numbers. RabbitMQ has no such timeout: an unacknowledged message comes
back only when its consumer's connection closes.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from workflows.core.definition import ForEach, Parallel, Saga, Step
from workflows.core.errors import VisibilityTimeoutTooShort
from workflows.core.retry import RetryPolicy, RetryVerdict, retry_verdict
from workflows.runtime.delivery import DELIVERY_OPTIONS
from workflows.runtime.dispatch import HARD_LIMIT_GRACE

KOMBU_DEFAULT_VISIBILITY_TIMEOUT = 3600.0
OUTAGE_RETRY_MAX = float(DELIVERY_OPTIONS["retry_backoff_max"])
"""An outage of the database or broker retries the whole message after up to this many seconds."""


@dataclass(frozen=True)
class Unacked:
    """How long one step's message of one kind may stay unacknowledged, and why."""

    saga: str
    step: str
    kind: str
    countdown: float
    """The longest wait before an attempt: the policy's longest retry countdown, or an outage's retry."""
    limit: float
    """The attempt's hard time limit."""

    @property
    def seconds(self) -> float:
        return self.countdown + self.limit

    def why(self) -> str:
        return f"a countdown of up to {self.countdown:g}s, then a time limit of {self.limit:g}s"


def longest_countdown(policy: RetryPolicy) -> float:
    """The longest wait the policy can ask for before an attempt (jitter only shortens it): the
    longest interval after a failed attempt the policy retries."""
    return max((policy.interval(a) for a in range(1, policy.max_attempts + 1)
                if retry_verdict(policy, a) is RetryVerdict.RETRY), default=0.0)


def declared_steps(saga: Saga) -> Iterable[Step]:
    """The steps that are Celery messages (a wait is a row, a child step a run of its own)."""
    for node in saga.steps:
        if isinstance(node, Step):
            yield node
        elif isinstance(node, Parallel):
            yield from (st for st in node.steps if isinstance(st, Step))
        elif isinstance(node, ForEach):
            yield node.step


def unacked(saga: Saga) -> list[Unacked]:
    """Every step's action and compensation messages: how long each may stay unacknowledged."""
    out = []
    for step in declared_steps(saga):
        out.append(Unacked(saga.name, step.name, "action", max(longest_countdown(step.retry), OUTAGE_RETRY_MAX),
                           step.timeout + HARD_LIMIT_GRACE))
        if step.compensation_name is not None:
            out.append(Unacked(saga.name, step.name, "compensation",
                               max(longest_countdown(step.compensation_retry), OUTAGE_RETRY_MAX),
                               step.effective_compensation_timeout + HARD_LIMIT_GRACE))
    return out


def check_visibility_timeout(sagas: Iterable[Saga], visibility_timeout: float) -> None:
    """Raise `VisibilityTimeoutTooShort` for the step whose message may stay unacknowledged the
    longest, if that is not below `visibility_timeout`."""
    worst = max((u for saga in sagas for u in unacked(saga)), key=lambda u: u.seconds, default=None)
    if worst is not None and worst.seconds >= visibility_timeout:
        raise VisibilityTimeoutTooShort(worst.saga, worst.step, worst.kind, worst.seconds, visibility_timeout,
                                        worst.why())


def is_redis(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0].split("+", 1)[0] in ("redis", "rediss", "sentinel")
