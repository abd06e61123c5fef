"""A step message as the decision loop reads it, and what its pass through the loop came to.

No Celery here: the step task (`orchestration.step_task`) decodes a message into a `StepReport`
with its `Delivery`, and `DecisionLoop.step` guards it, runs it, decides and commits. The caller
publishes the committed transition (or runs its follow-up inline, or retries this very message).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workflows.core.state import Dispatch, MessageInfo, RunState, Transition


@dataclass(frozen=True)
class Delivery:
    """What the broker says about the message being handled."""

    task_id: str
    redelivered: bool = False
    """The broker handed it out before (its worker died, or it was restored)."""
    retries: int = 0
    """Celery retries of this message so far (a retry of the same task id)."""
    kwargs: dict[str, Any] | None = None
    """The raw keyword arguments, kept in a dead letter."""
    headers: dict[str, str] | None = None
    """Its trace headers (`runtime.tracing`: `traceparent`, or `saga_trace_link` after a long backoff)."""


@dataclass(frozen=True)
class HandOn:
    """This worker does not hold the run's saga version: send the same message again (same task
    id, `handoffs` one more) to the same queue after `countdown`, for a worker that holds it."""

    args: list[Any]
    kwargs: dict[str, Any]
    countdown: float


@dataclass(frozen=True)
class StepReport:
    """One step message: which dispatch of which run it answers, and how it came."""

    task: str
    """The step task's name."""
    queue: str
    """The step task's queue."""
    saga_id: str
    step: str
    saga: str
    kind: str
    version: int
    """The run's version the message was dispatched at."""
    input: dict[str, Any]
    delivery: Delivery
    by: str
    """The message being handled: every transition made while handling it is its own (an inline
    step's is the message that ran it)."""
    attempt: int = 1
    results: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    handoffs: int = 0
    """Times a worker without the run's saga version handed this message on."""
    inline_queues: frozenset[str] | None = None
    """Set when steps run inline: a redelivery that finds its own commit counts a lost worker of
    a follow-up on one of these queues it would have run inline (`runtime.redelivery.lost_inline`)."""
    error: dict[str, str] | None = None
    """A compensation of an action that did not succeed: the action's error (`{"type", "message"}`)."""

    @property
    def dispatch(self) -> Dispatch:
        return Dispatch(self.step, self.kind, self.delivery.task_id, self.attempt)

    def message(self, run: RunState) -> MessageInfo:
        """The message as a dead letter of its transition keeps it."""
        return MessageInfo(task_name=self.task, queue=self.queue, args=[self.saga_id, self.step],
                           kwargs={"saga": self.saga, "kind": self.kind, "version": self.version,
                                   "saga_version": run.saga_version, "input": self.input,
                                   "attempt": self.attempt, "results": self.results, "result": self.result,
                                   **({"error": self.error} if self.error is not None else {})},
                           headers={"task_id": self.delivery.task_id, "retries": self.delivery.retries})

    def raw_message(self) -> MessageInfo:
        """The message as it came, for a dead letter of a message no run takes."""
        return MessageInfo(task_name=self.task, queue=self.queue, args=[self.saga_id, self.step],
                           kwargs=dict(self.delivery.kwargs or {}), headers={"task_id": self.delivery.task_id})


@dataclass(frozen=True)
class StepPass:
    """What a step message's pass through the loop came to."""

    transition: Transition | None = None
    """Committed, not yet published: the caller publishes it, runs its follow-up inline, or
    retries this very message. None: nothing to publish (stale, dead-lettered, handed on...)."""
    error: BaseException | None = None
    """The step function's error, if it raised."""
    hand_on: HandOn | None = None
    """This worker does not hold the run's version: the caller sends the message on."""
