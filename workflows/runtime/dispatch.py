"""Dispatch: what the runtime publishes after a commit, and the two ways to publish it.

`CeleryDispatcher` sends step messages as Celery tasks and dead-letter copies to the broker's
`dead_letter` queue (which no worker consumes). `RecordingDispatcher` keeps what would be sent, in
order, for the in-process test tier: the decision loop, the step handling, the sweeper and the
operator actions run against it without a broker.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kombu.entity import Queue

from workflows.core.run import Side
from workflows.core.state import Command, DeadLetter, RunState
from workflows.core.steps import StepError, step_tasks
from workflows.core.views import DeadLetterView
from workflows.runtime.brokers import queue_arguments
from workflows.runtime.tracing import NO_TRACING, Tracing

log = logging.getLogger("workflows.dispatch")

DEAD_LETTER_QUEUE = "dead_letter"
HARD_LIMIT_GRACE = 5.0
"""Seconds between a step's soft time limit (raises in the task) and its hard one (kills it)."""


def message_for(run: RunState, cmd: Command) -> tuple[list[Any], dict[str, Any]]:
    """The arguments of a step message: saga id first (Flower shows and searches it)."""
    s = run.step(cmd.step)
    kwargs: dict[str, Any] = {"saga": run.saga_type, "kind": str(cmd.kind), "version": cmd.version,
                              "saga_version": run.saga_version, "input": run.input}
    if cmd.kind == Side.ACTION:
        kwargs["results"] = {k: v for k, v in run.results().items() if run.step(k).index < cmd.results_before}
        kwargs["attempt"] = s.attempts + 1
    else:
        kwargs["result"] = s.result
        if s.result is None and s.error is not None:  # its action failed or timed out: what is known of it
            kwargs["error"] = StepError.from_row(s.error).as_message()
        kwargs["attempt"] = s.compensation_attempts + 1
    return [run.saga_id, cmd.step], kwargs


REPR_LIMIT = 1024
"""Characters of a step message's arguments in its task events (Celery's own limit)."""


def short_repr(value: Any) -> str:
    """What Flower shows of a step message's keyword arguments: `repr`, cut at `REPR_LIMIT`. Given
    to Celery as `kwargsrepr`, so it does not run its pure-Python `saferepr` over the run's input and
    results on every publish (0.4 ms of a step's CPU under a profiler; the arguments, the saga id
    first, are short and shown whole)."""
    text = repr(value)
    return text if len(text) <= REPR_LIMIT else text[:REPR_LIMIT - 3] + "..."


def dead_letter_body(dl: DeadLetter | DeadLetterView, saga_id: str | None, at: datetime) -> dict[str, Any]:
    """The broker copy of a dead letter (what tools watching the `dead_letter` queue read)."""
    if isinstance(dl, DeadLetter):
        m = dl.message_or_default(saga_id)
        task, queue, args, kwargs, headers = m.task_name, m.queue, m.args, m.kwargs, m.headers
        step, kind, attempts, exception, traceback = dl.step, dl.kind, dl.attempts, str(dl.error), dl.error.traceback
    else:
        task, queue, args, kwargs, headers = dl.task_name, dl.queue, dl.args, dl.kwargs, dl.headers
        step, kind, attempts, exception, traceback = dl.step, dl.kind, dl.attempts, dl.exception, dl.traceback
    return {"dead_letter_id": dl.id, "saga_id": saga_id, "step": step, "kind": kind, "task": task, "queue": queue,
            "args": args, "kwargs": kwargs, "headers": headers, "attempts": attempts, "exception": exception,
            "traceback": traceback, "at": at.isoformat()}


class Dispatcher(Protocol):
    """Where the runtime's messages go."""

    def send_step(self, run: RunState, cmd: Command) -> None:
        """Publish the step message `cmd` of `run`."""
        ...

    def send_dead_letter(self, body: dict[str, Any]) -> None:
        """Copy a dead letter (`dead_letter_body`) to the dead-letter queue."""
        ...


class CeleryDispatcher:
    """Publishes through a Celery app (its broker connection pool)."""

    def __init__(self, app: Any, tracing: Tracing = NO_TRACING) -> None:
        self.app, self.tracing = app, tracing

    def send_step(self, run: RunState, cmd: Command) -> None:
        args, kwargs = message_for(run, cmd)
        st = step_tasks.get(cmd.task)
        self.app.send_task(cmd.task, args=args, kwargs=kwargs, task_id=cmd.task_id,
                           headers=self.tracing.message_headers(run, cmd) or None,
                           queue=st.queue if st is not None else None, eta=cmd.eta,
                           soft_time_limit=cmd.time_limit, time_limit=cmd.time_limit + HARD_LIMIT_GRACE,
                           argsrepr=repr(args), kwargsrepr=short_repr(kwargs))
        log.info("dispatched %s %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id, "step": cmd.step})

    def send_dead_letter(self, body: dict[str, Any]) -> None:
        queue = Queue(DEAD_LETTER_QUEUE, durable=True, queue_arguments=queue_arguments(self.app))
        with self.app.producer_or_acquire() as producer:
            producer.publish(body, exchange="", routing_key=DEAD_LETTER_QUEUE, declare=[queue],
                             serializer="json", delivery_mode=2, retry=True)


@dataclass(frozen=True)
class Sent:
    """One message a `RecordingDispatcher` was asked to publish."""

    kind: str
    """'step' or 'dead_letter'."""
    saga_id: str | None
    step: str | None
    task: str | None = None
    task_id: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    eta: datetime | None = None
    command: Command | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """A step message's trace headers (`runtime.tracing`)."""


@dataclass
class RecordingDispatcher:
    """Records what would be published, in order; publishes nothing. `fail` makes sends raise."""

    sent: list[Sent] = field(default_factory=list)
    fail: BaseException | None = None
    tracing: Tracing = NO_TRACING

    def send_step(self, run: RunState, cmd: Command) -> None:
        if self.fail is not None:
            raise self.fail
        args, kwargs = message_for(run, cmd)
        self.sent.append(Sent("step", run.saga_id, cmd.step, cmd.task, cmd.task_id, args, kwargs, cmd.eta, cmd,
                              self.tracing.message_headers(run, cmd)))

    def send_dead_letter(self, body: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append(Sent("dead_letter", body.get("saga_id"), body.get("step"), body.get("task"),
                              body.get("dead_letter_id"), kwargs=body))

    def steps(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "step"]

    def dead_letters(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "dead_letter"]

    def take(self) -> list[Sent]:
        """What was sent since the last `take`, and forget it."""
        out, self.sent = self.sent, []
        return out
