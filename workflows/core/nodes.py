"""The task nodes of a saga: a `Step`, a `Parallel` group, a `ForEach` fan-out. Pure values,
validated when declared. (A `Wait` is in wait.py, a `Child` in child.py.)"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from workflows.core.child import Child
from workflows.core.errors import DefinitionError
from workflows.core.names import NAME, REQUIRED, HasTaskName, task_name
from workflows.core.sealed import check_paths
from workflows.core.retry import DEFAULT_ACTION_POLICY, DEFAULT_COMPENSATION_POLICY, RetryPolicy
from workflows.core.steps import StepTask
from workflows.core.typed import declared_model


@dataclass(frozen=True)
class Step:
    """One step of a saga: an action, the compensation that undoes it, and their policies."""

    name: str
    action: str | HasTaskName
    compensation: str | HasTaskName | None = REQUIRED
    retry: RetryPolicy = DEFAULT_ACTION_POLICY
    compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_POLICY
    timeout: float = 300.0
    """Seconds one attempt of the action may run: a soft limit raises in the task, a hard one kills it."""
    compensation_timeout: float | None = None
    """Seconds one attempt of the compensation may run; defaults to `timeout`."""
    compensate_failure: bool = False
    """Also compensate this step when its action fails for good (a permanent error, retries
    exhausted): it may have acted before failing (a charge taken before the gateway errored). Its
    compensation then gets `ctx.result` None and `ctx.error` (the action's error), and must do
    nothing when there is nothing to undo. False (the default): only an action that succeeded or
    timed out is compensated."""
    input_model: type[BaseModel] | None = None
    """A pydantic model the saga's input must satisfy for this step (the fields it reads), checked
    at the start: a run this step could not read is refused at the door. Default: the annotation of
    the action's input parameter, when `action` is a typed `@step_task` function."""
    result_model: type[BaseModel] | None = None
    """A pydantic model the action's result must satisfy, checked when the action reports: a result
    that does not fit fails the step for good (`StepTypeError`, not retried). Default: the action's
    return annotation. Neither model is part of the saga's shape (`core.shape`)."""
    sensitive_result: tuple[str, ...] = ()
    """Dotted paths of fields of the action's result to keep sealed (`("card",)`): sealed by the
    worker before the result is recorded or sent to a later step, opened for the step functions
    that read it (`ctx.results`, a compensation's `ctx.result`), shown masked (`core.sealed`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(
                f"step name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 100 characters)"
            )
        self._adopt_models()
        object.__setattr__(self, "sensitive_result",
                           check_paths(f"step {self.name!r}: sensitive_result", self.sensitive_result))
        object.__setattr__(self, "action", task_name(self.action, f"step {self.name!r}: action"))
        if self.compensation is REQUIRED:
            raise DefinitionError(
                f"step {self.name!r} declares no compensation: pass compensation=<task> or, "
                "if there is nothing to undo, compensation=None explicitly"
            )
        if self.compensation is not None:
            object.__setattr__(
                self, "compensation", task_name(self.compensation, f"step {self.name!r}: compensation")
            )
        if not isinstance(self.compensate_failure, bool):
            raise DefinitionError(f"step {self.name!r}: compensate_failure must be True or False "
                                  f"(got {self.compensate_failure!r})")
        if self.compensate_failure and self.compensation is None:
            raise DefinitionError(f"step {self.name!r}: compensate_failure=True needs a compensation to run "
                                  "when the action fails: pass compensation=<task>")
        for attr in ("retry", "compensation_retry"):
            if not isinstance(getattr(self, attr), RetryPolicy):
                raise DefinitionError(f"step {self.name!r}: {attr} must be a RetryPolicy")
        for attr in ("timeout", "compensation_timeout"):
            value = getattr(self, attr)
            if value is None and attr == "compensation_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise DefinitionError(f"step {self.name!r}: {attr} must be a number of seconds > 0 (got {value!r})")

    def _adopt_models(self) -> None:
        """The models declared here, else those of the action's annotations; both and different: refused."""
        for attr in ("input_model", "result_model"):
            declared_model(getattr(self, attr), f"step {self.name!r}: {attr}")
        if not isinstance(self.action, StepTask):
            return
        sig, task = self.action.signature, self.action.name
        if sig.takes_result:
            raise DefinitionError(f"step {self.name!r}: action {task!r} takes a third parameter (its "
                                  "own result): only a compensation receives its action's result; drop it")
        for attr, annotated in (("input_model", sig.input), ("result_model", sig.result)):
            declared = getattr(self, attr)
            if declared is not None and annotated is not None and declared is not annotated:
                raise DefinitionError(f"step {self.name!r}: {attr}={declared.__name__} but action "
                                      f"{task!r} is annotated {annotated.__name__}: declare one")
            if declared is None:
                object.__setattr__(self, attr, annotated)

    @property
    def action_name(self) -> str:
        assert isinstance(self.action, str)
        return self.action

    @property
    def compensation_name(self) -> str | None:
        assert self.compensation is None or isinstance(self.compensation, str)
        return self.compensation

    @property
    def effective_compensation_timeout(self) -> float:
        return self.compensation_timeout if self.compensation_timeout is not None else self.timeout


@dataclass(frozen=True)
class Parallel:
    """Steps dispatched together; the group succeeds when every one of them has.

    When one fails for good, no new work starts; the others still in flight are awaited (a late
    success is recorded, then compensated; a running child saga is cancelled), then the group's
    completed steps are compensated concurrently, then the steps before the group, newest first.
    A branch may be a `Child`: a saga of its own."""

    name: str
    steps: tuple[Step | Child, ...] | list[Step | Child]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(f"parallel group name {self.name!r} must be a plain name like 'prepare'")
        steps = tuple(self.steps)
        if not steps:
            raise DefinitionError(f"parallel group {self.name!r} has no steps: give it at least one Step")
        for st in steps:
            if not isinstance(st, (Step, Child)):
                raise DefinitionError(f"parallel group {self.name!r}: {st!r} is not a Step or a Child "
                                      "(groups do not nest)")
        object.__setattr__(self, "steps", steps)


ItemsOf = Callable[[dict[str, Any]], Sequence[Any]]


@dataclass(frozen=True)
class ForEach:
    """One branch of `step` per item of the input (`items(data)`), dispatched together, at most
    `max_items`. Branch `i` is the step `<step name>-<i>`: its idempotency key is
    `<saga id>-<step name>-<i>` and `ctx.item` is its item. Compensated like a `Parallel` group."""

    step: Step
    items: ItemsOf = field(compare=False)
    max_items: int = 100
    items_name: str = field(default="", init=False)
    """The items function's qualified name: what equality compares (a module imported twice makes
    a new function)."""

    def __post_init__(self) -> None:
        if not isinstance(self.step, Step):
            raise DefinitionError(f"ForEach step must be a Step (got {self.step!r})")
        if not callable(self.items):
            raise DefinitionError(f"ForEach {self.step.name!r}: items must be a function of the input, "
                                  "like lambda data: data['parcels']")
        if isinstance(self.max_items, bool) or not isinstance(self.max_items, int) or self.max_items < 1:
            raise DefinitionError(f"ForEach {self.step.name!r}: max_items must be an int >= 1 "
                                  f"(got {self.max_items!r})")
        object.__setattr__(self, "items_name", getattr(self.items, "__qualname__", repr(self.items)))

    @property
    def name(self) -> str:
        return self.step.name

    def branch(self, index: int) -> str:
        return f"{self.step.name}-{index}"
