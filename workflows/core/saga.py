"""A `Saga`: a named, versioned sequence of nodes, compiled to its plan when declared. Pure."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from workflows.core.child import Child
from workflows.core.errors import DefinitionError, InvalidInput, UnknownSaga
from workflows.core.names import NAME
from workflows.core.nodes import ForEach, Parallel, Step
from workflows.core.plan import Node, Plan
from workflows.core.sealed import check_paths, unsealed_errors
from workflows.core.shape import fingerprint_of, shape_of
from workflows.core.typed import field_errors, summary
from workflows.core.wait import Wait


@dataclass(frozen=True)
class Saga:
    """A sequence of nodes (steps, parallel groups, fan-outs, waits, child sagas) under a unique
    name. Immutable; register it to make it startable. Each node is a *stage*: a stage starts when
    every step of the one before it succeeded. Compiled to its `plan` when declared."""

    name: str
    steps: tuple[Node, ...] | list[Node]
    input_model: type[BaseModel] | None = None
    """A pydantic model the input must satisfy; without one, any JSON object is accepted."""
    deadline: float | None = None
    """Seconds after start after which a still-running saga is cancelled and compensated."""
    description: str = ""
    version: int = 1
    """The definition's version (not a run's optimistic-lock counter): every run is driven to its
    end by the version it started with. Bump it to change the shape (steps, order, groups,
    compensations); several versions of a saga may be registered at once."""
    stuck_after: float | timedelta | None = None
    """A RUNNING or COMPENSATING run unchanged for longer than this (seconds, or a timedelta) needs a
    person: the sweeper records a `no_progress` notification. None: the `SAGA_STUCK_AFTER` default."""
    sensitive: tuple[str, ...] = ()
    """Dotted paths of input fields to keep sealed (`("payment.card",)`): encrypted before the run is
    written or any message sent, shown masked, opened only for the step function (`core.sealed`)."""
    plan: Plan = field(init=False, repr=False, compare=False)
    """Its nodes compiled: each row's stage, kind and policies per side."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(
                f"saga name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 100 characters)"
            )
        nodes = tuple(self.steps)
        if not nodes:
            raise DefinitionError(f"saga {self.name!r} has no steps: declare at least one Step")
        object.__setattr__(self, "plan", Plan(self.name, nodes))
        if self.input_model is not None and not (
            isinstance(self.input_model, type) and issubclass(self.input_model, BaseModel)
        ):
            raise DefinitionError(f"saga {self.name!r}: input_model must be a pydantic BaseModel subclass")
        if self.deadline is not None and (isinstance(self.deadline, bool) or self.deadline <= 0):
            raise DefinitionError(f"saga {self.name!r}: deadline must be seconds > 0 or None")
        if isinstance(self.stuck_after, timedelta):
            object.__setattr__(self, "stuck_after", self.stuck_after.total_seconds())
        bound = self.stuck_after
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float)) or bound <= 0):
            raise DefinitionError(f"saga {self.name!r}: stuck_after must be seconds > 0, a timedelta, or None "
                                  f"(got {self.stuck_after!r})")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(f"saga {self.name!r}: version must be an int >= 1 (got {self.version!r})")
        object.__setattr__(self, "steps", nodes)
        object.__setattr__(self, "sensitive", check_paths(f"saga {self.name!r}", self.sensitive))

    @property
    def stuck_seconds(self) -> float | None:
        """`stuck_after` in seconds (None: the settings' default applies)."""
        return self.stuck_after.total_seconds() if isinstance(self.stuck_after, timedelta) else self.stuck_after

    @property
    def shape(self) -> list[dict[str, Any]]:
        """What a running run depends on, as JSON: its stages, their steps, actions and compensations."""
        return shape_of(self.steps)

    @property
    def fingerprint(self) -> str:
        """A short hash of `shape`: equal for the same shape, whatever module declared it."""
        return fingerprint_of(self.shape)

    def rows(self, data: dict[str, Any]) -> list[tuple[str, int]]:
        """(step name, stage) of every step a run with input `data` has (one per branch of a fan-out)."""
        out: list[tuple[str, int]] = []
        for stage, node in enumerate(self.steps):
            if isinstance(node, ForEach):
                out += [(node.branch(i), stage) for i in range(len(self.items_of(node, data)))]
            else:
                out += [(st.name, stage) for st in (node.steps if isinstance(node, Parallel) else (node,))]
        return out

    # -- the declarations, by row name (the engine reads `plan`)

    def step(self, name: str) -> Step:
        """The declaration of step (or fan-out branch) `name`."""
        node = self.plan.node(name)
        if not isinstance(node.declared, Step):
            raise DefinitionError(f"step {name!r} of saga {self.name!r} is a {node.kind.value}, not a task step")
        return node.declared

    def stage_of(self, name: str) -> int:
        return self.plan.node(name).stage

    def index_of(self, step_name: str) -> int:
        """The stage of `step_name` (of a line of single steps: its position)."""
        return self.stage_of(step_name)

    def wait(self, name: str) -> Wait | None:
        """The declaration of wait `name`, or None if `name` is not a wait."""
        node = self.plan.find(name)
        return node.declared if node is not None and isinstance(node.declared, Wait) else None

    def waits_for(self, signal: str) -> list[Wait]:
        """The waits of this saga on `signal`, in stage order."""
        return self.plan.waits_for(signal)

    def child(self, name: str) -> Child | None:
        """The `Child` declaration of step `name`, or None if it is not a child step."""
        node = self.plan.find(name)
        return node.declared if node is not None and isinstance(node.declared, Child) else None

    def stage_node(self, stage: int) -> Node:
        return self.steps[stage]

    def has(self, name: str) -> bool:
        return self.plan.find(name) is not None

    def item(self, name: str, data: dict[str, Any]) -> Any:
        """The item of fan-out branch `name` (None for any other step)."""
        fan, index = self.plan.branch(name)
        return None if fan is None else self.items_of(fan, data)[index]

    def items_of(self, fan: ForEach, data: dict[str, Any]) -> Sequence[Any]:
        try:
            items = fan.items(data)
        except Exception as e:  # the input does not have what the fan-out reads
            raise InvalidInput(f"invalid input for saga {self.name!r}: ForEach {fan.name!r} could not read its "
                               f"items ({type(e).__name__}: {e})") from None
        if not isinstance(items, (list, tuple)):
            raise InvalidInput(f"invalid input for saga {self.name!r}: ForEach {fan.name!r} items must be a list, "
                               f"got {type(items).__name__}")
        if len(items) > fan.max_items:
            raise InvalidInput(f"invalid input for saga {self.name!r}: ForEach {fan.name!r} has {len(items)} "
                               f"items, at most {fan.max_items}")
        return items

    def validate_input(self, data: Any, children: Callable[[Child], Any] | None = None) -> dict[str, Any]:
        """The input as a JSON-ready dict, or `InvalidInput` saying what is wrong. `children`
        resolves the first stage's child steps, whose input is checked here too (default: only
        children declared as `Saga` values)."""
        children = children or declared_child
        if self.input_model is not None:
            try:
                clean: dict[str, Any] = self.input_model.model_validate(data).model_dump(mode="json")
            except ValidationError as e:
                # an input already sealed (a child's, made from its parent's): a sealed field was
                # checked in clear at its own door, and is kept as it is
                errors = unsealed_errors(field_errors(e), data)
                if errors or not isinstance(data, dict):
                    raise InvalidInput(f"invalid input for saga {self.name!r}: {summary(errors, 'input')}",
                                       errors) from None
                clean = data
        elif not isinstance(data, dict):
            raise InvalidInput(f"input for saga {self.name!r} must be a JSON object, got {type(data).__name__}")
        else:
            clean = data
        self.check_step_inputs(clean)
        for fan in self.plan.fan_outs:
            self.items_of(fan, clean)  # the fan-out's items are there, a list, within bounds
        for first in self.first_children():  # a first child's input is known at the door: refuse it there
            try:
                if first.first_stage_cycle(self.name, children) is None:  # a cycle fails the step when it starts
                    first.child_input(clean, {}, children(first))
            except UnknownSaga:
                pass  # not registered in this process: the step fails with that reason when it starts
        return clean

    def check_step_inputs(self, data: dict[str, Any]) -> None:
        """`InvalidInput` naming each step whose `input_model` the input does not satisfy, and its fields."""
        errors: list[dict[str, Any]] = []
        parts: list[str] = []
        for st in self.plan.task_steps:
            if st.input_model is None:
                continue
            try:
                st.input_model.model_validate(data)
            except ValidationError as e:
                mine = unsealed_errors(field_errors(e), data)
                if not mine:
                    continue
                errors += [{**x, "step": st.name} for x in mine]
                parts.append(f"step {st.name!r} ({st.input_model.__name__}) reads {summary(mine, 'input')}")
        if errors:
            raise InvalidInput(f"invalid input for saga {self.name!r}: {'; '.join(parts)}", errors)

    def first_children(self) -> list[Child]:
        """The child steps of the first stage (started with the run itself)."""
        return self.plan.children_of(0)


ChildDefinitions = Callable[[Child], Saga]
"""What a caller gives the core to resolve a `Child` step to the definition its child starts on
(`SagaRegistry.child_definition`); the core looks nothing up itself."""


def declared_child(node: Child) -> Saga:
    """The child definitions of a caller with no registry: a child declared as a `Saga` value only."""
    if isinstance(node.saga, Saga):
        return node.saga
    raise UnknownSaga(f"child step {node.name!r} names saga {node.saga_name!r}: no registry was given to look it up")

