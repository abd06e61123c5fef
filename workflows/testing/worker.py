"""The in-process worker: delivers what a `RecordingDispatcher` recorded to the step task's handler,
in order, as a Celery worker would, with the test's clock.

Celery's own retry of a message (`RetrySelf`: the same task id, due after a countdown) and a hand-on
to a worker holding another version wait in `waiting` until the clock reaches their ETA. Every step
function runs through `faults.instrument`: the faults the test armed strike, every call is recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from workflows.core.steps import step_tasks
from workflows.orchestration.step_task import Delivery, handle_step
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import RecordingDispatcher, Sent
from workflows.testing.faults import Call, Faults, instrument


class NotSettled(AssertionError):
    """The runs kept sending messages past the worker's bound: a loop, or a bound too small."""


@dataclass
class Worker:
    """Delivers recorded step messages to `handle_step`, in order, as a worker would."""

    rt: Runtime
    dispatcher: RecordingDispatcher
    waiting: list[tuple[Sent, int]] = field(default_factory=list)
    """Celery retries of a message (same task id) waiting for their ETA: (message, retries)."""
    published_dead_letters: list[str] = field(default_factory=list)
    """Ids of the dead-letter copies seen on the (recorded) broker."""
    faults: Faults = field(default_factory=Faults)
    calls: list[Call] = field(default_factory=list)
    """Every call of a step function this worker made, in order."""

    def deliver(self, m: Sent, *, redelivered: bool = False, retries: int = 0) -> None:
        """Deliver one step message (`redelivered`: as the broker marks a message whose worker was lost)."""
        if m.task is None or m.saga_id is None or m.step is None or m.task_id is None:
            raise ValueError(f"not a step message: {m!r}")
        st = step_tasks.get(m.task)
        if st is None:
            raise LookupError(f"no step task {m.task!r} is declared in this process (import the module that "
                              "declares it with @step_task)")
        st = instrument(st, self.faults, self.calls)
        retry = handle_step(self.rt, st, m.saga_id, m.step,
                            Delivery(m.task_id, redelivered, retries, m.kwargs, m.headers or None), **m.kwargs)
        if retry is not None:
            eta = self.rt.clock() + timedelta(seconds=retry.countdown)
            headers = getattr(retry, "headers", None) or m.headers  # a RetrySelf's own, as Celery's retry sends them
            again = Sent("step", m.saga_id, m.step, m.task, m.task_id, retry.args, retry.kwargs, eta, m.command,
                         headers)
            self.waiting.append((again, retries + 1))

    def due(self) -> list[tuple[Sent, int]]:
        """The waiting retries whose ETA the clock reached, taken out of `waiting`."""
        now = self.rt.clock()
        due = [(m, r) for m, r in self.waiting if m.eta is None or m.eta <= now]
        self.waiting = [w for w in self.waiting if w not in due]
        return due

    def next_eta(self) -> timedelta | None:
        """How long until the next waiting retry is due (None: nothing waits)."""
        etas = [m.eta for m, _ in self.waiting if m.eta is not None]
        if len(etas) < len(self.waiting):
            return timedelta(0)
        return max(timedelta(0), min(etas) - self.rt.clock()) if etas else None

    def drain(self, max_steps: int = 100) -> None:
        """Deliver everything sent, and every retry due at the test's clock, until nothing is left."""
        for _ in range(max_steps):
            sent = self.dispatcher.take()
            self.published_dead_letters += [str(m.kwargs["dead_letter_id"]) for m in sent if m.kind == "dead_letter"]
            ready = [m for m in sent if m.kind == "step"]
            if not ready:
                due = self.due()
                if not due:
                    return
                for m, r in due:
                    self.deliver(m, retries=r)
                continue
            for m in ready:
                self.deliver(m)
        raise NotSettled(f"the runs did not settle in {max_steps} rounds of delivery")
