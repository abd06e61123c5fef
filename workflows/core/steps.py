"""Step tasks: plain functions made into saga steps.

    @step_task("payment.charge", queue="payment")
    def charge_payment(ctx: StepContext, order: dict) -> dict:
        return gateway.charge(order["total"], idempotency_key=ctx.idempotency_key)

A function may type its input and result with pydantic models instead (`def charge(ctx, order:
Order) -> Charged`): `core.typed` reads its annotations when it is declared.

The decorator only records the function; `workflows.install(app)` (in `worker.py`) turns every
recorded step into a Celery task named as declared, with late acks, routed to its queue. The
decorated function stays a plain function: tests can call it directly.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workflows.core.errors import DefinitionError
from workflows.core.typed import Signature, signature_of

_TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_QUEUE = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")


@dataclass(frozen=True)
class StepError:
    """What a compensation knows of its action's failure (`ctx.error`). Immutable."""

    type: str
    """The exception's class name, like 'GatewayError'; '' when the action raised nothing (it timed
    out, its worker was lost, the saga was cancelled while it ran)."""
    message: str

    @classmethod
    def from_row(cls, text: str) -> StepError:
        """From a step row's error: a failure's is recorded as '<exception type>: <message>'."""
        found = _ERROR.match(text)
        return cls(found[1], found[2]) if found else cls("", text)

    @classmethod
    def from_message(cls, value: dict[str, str] | None) -> StepError | None:
        return None if value is None else cls(value["type"], value["message"])

    def as_message(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.type else self.message


_ERROR = re.compile(r"^([A-Z][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*): (.*)$", re.DOTALL)


@dataclass(frozen=True)
class StepContext:
    """What a step knows about the saga it runs in. Immutable."""

    saga_id: str
    saga_type: str
    step: str
    kind: str
    """'action' or 'compensation'."""
    attempt: int
    """1 for the first try, 2 for the first retry, ..."""
    task_id: str
    input: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Results of the steps before this one, by step name (actions)."""
    result: dict[str, Any] | None = None
    """The recorded result of this step's action (compensations; None if it timed out or failed)."""
    error: StepError | None = None
    """A compensation of an action that did not succeed: its error (a step declaring
    `compensate_failure` is compensated after its action failed for good). None otherwise."""
    item: Any = None
    """A fan-out branch's item (`ForEach`): its element of `items(input)`; None for other steps."""
    saga_version: int = 1
    """The version of the saga's definition the run is driven by."""

    @property
    def idempotency_key(self) -> str:
        """Stable across retries, redeliveries and redrives: saga id + step name (a fan-out branch's
        name ends with its index: `<saga id>-ship_parcel-2`)."""
        return f"{self.saga_id}-{self.step}"


StepFunction = Callable[..., Any]
"""`fn(ctx, data) -> dict | None`, or typed: `fn(ctx, order: Order) -> Charged`; a compensation
may take its action's result as a third parameter (`core.typed`)."""


@dataclass(frozen=True)
class StepTask:
    """A function declared as a step: its task name, queue, the function itself and the models its
    annotations declare."""

    name: str
    queue: str
    fn: StepFunction
    signature: Signature = field(default_factory=Signature, compare=False)

    def __call__(self, ctx: StepContext, data: dict[str, Any]) -> Any:
        """Call the function as its annotations ask (model instances for typed parameters)."""
        return self.signature.call(self.fn, ctx, data)


class StepTaskRegistry:
    def __init__(self) -> None:
        self._tasks: dict[str, StepTask] = {}

    def add(self, st: StepTask) -> StepTask:
        old = self._tasks.get(st.name)
        if old is not None and old.fn is not st.fn and old.fn.__qualname__ != st.fn.__qualname__:
            raise DefinitionError(f"two different functions are declared as step task {st.name!r}")
        self._tasks[st.name] = st
        return st

    def get(self, name: str) -> StepTask | None:
        return self._tasks.get(name)

    def all(self) -> list[StepTask]:
        return list(self._tasks.values())

    def queues(self) -> set[str]:
        return {t.queue for t in self._tasks.values()}

    def snapshot(self) -> dict[str, StepTask]:
        """A copy of what is declared, for `restore` (tests)."""
        return dict(self._tasks)

    def restore(self, snapshot: dict[str, StepTask]) -> None:
        self._tasks = dict(snapshot)


step_tasks = StepTaskRegistry()


def step_task(name: str, *, queue: str) -> Callable[[StepFunction], StepTask]:
    """Declare `fn(ctx, data) -> dict | None` as the step task `name`, consumed from `queue`. Its
    annotations may type it with pydantic models (`core.typed`); one that is neither a model nor a
    dict is a `DefinitionError` here."""
    if not isinstance(name, str) or not _TASK_NAME.match(name):
        raise DefinitionError(f"step task name {name!r} must be dotted, like 'payment.charge'")
    if name.startswith("saga."):
        raise DefinitionError(f"step task name {name!r}: the 'saga.' prefix is reserved for the orchestrator")
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise DefinitionError(f"step task {name!r}: queue {queue!r} must be a plain queue name")

    def wrap(fn: StepFunction) -> StepTask:
        if not callable(fn):
            raise DefinitionError(f"step task {name!r} must decorate a function")
        return step_tasks.add(StepTask(name=name, queue=queue, fn=fn, signature=signature_of(fn, name)))

    return wrap
