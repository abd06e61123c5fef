"""The in-process tier's clock and worker (tests/test_inprocess.py, tests/test_waits.py).

Here, not in a test module: a test module imported by another is loaded twice by pytest, under
two names, with two sets of its step tasks. `Worker` delivers what a `RecordingDispatcher`
recorded to the step task's handler, as a Celery worker would; the clock moves with `advance`,
nothing sleeps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from workflows.core.steps import step_tasks
from workflows.orchestration.step_task import Delivery, handle_step
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import RecordingDispatcher, Sent


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Worker:
    """Delivers recorded step messages to `handle_step`, in order, as a worker would."""

    rt: Runtime
    dispatcher: RecordingDispatcher
    waiting: list[tuple[Sent, int]] = field(default_factory=list)
    """Celery retries of a message (same task id) waiting for their ETA: (message, retries)."""
    published_dead_letters: list[str] = field(default_factory=list)
    """Ids of the dead-letter copies seen on the (recorded) broker."""

    def deliver(self, m: Sent, *, redelivered: bool = False, retries: int = 0) -> None:
        assert m.task is not None and m.saga_id is not None and m.step is not None and m.task_id is not None
        st = step_tasks.get(m.task)
        assert st is not None, m.task
        retry = handle_step(self.rt, st, m.saga_id, m.step,
                            Delivery(m.task_id, redelivered, retries, m.kwargs, m.headers or None), **m.kwargs)
        if retry is not None:
            eta = self.rt.clock() + timedelta(seconds=retry.countdown)
            headers = getattr(retry, "headers", None) or m.headers  # a RetrySelf's own, as Celery's retry sends them
            again = Sent("step", m.saga_id, m.step, m.task, m.task_id, retry.args, retry.kwargs, eta, m.command,
                         headers)
            self.waiting.append((again, retries + 1))

    def drain(self, max_steps: int = 100) -> None:
        """Deliver everything sent, and every retry due at the test's clock, until nothing is left."""
        for _ in range(max_steps):
            sent = self.dispatcher.take()
            self.published_dead_letters += [str(m.kwargs["dead_letter_id"]) for m in sent if m.kind == "dead_letter"]
            ready = [m for m in sent if m.kind == "step"]
            if not ready:
                due = [(m, r) for m, r in self.waiting if m.eta is None or m.eta <= self.rt.clock()]
                if not due:
                    return
                self.waiting = [w for w in self.waiting if w not in due]
                for m, r in due:
                    self.deliver(m, retries=r)
                continue
            for m in ready:
                self.deliver(m)
        raise AssertionError("the saga did not settle")
