"""Saga declarations: frozen values, validated when declared. No I/O here."""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from workflows.core.errors import DefinitionError, InvalidInput, UnknownSaga, UnknownSagaVersion, VersionConflict
from workflows.core.shape import conflict_message, fingerprint_of, shape_of
from workflows.core.retry import DEFAULT_ACTION_POLICY, DEFAULT_COMPENSATION_POLICY, RetryPolicy

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


class RunOf(Protocol):
    """A run, or a view of one: what names the definition that decides it."""

    @property
    def saga_type(self) -> str: ...

    @property
    def saga_version(self) -> int: ...


class HasTaskName(Protocol):
    @property
    def name(self) -> str: ...  # read-only: a StepTask (frozen) has it


def task_name(ref: str | HasTaskName, what: str) -> str:
    """The Celery task name a step refers to: a string or anything with `.name`."""
    name = ref if isinstance(ref, str) else getattr(ref, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise DefinitionError(
            f"{what} must be a task name like 'payment.charge' or a @step_task function (got {ref!r})"
        )
    return name


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

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"step name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 100 characters)"
            )
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
        for attr in ("retry", "compensation_retry"):
            if not isinstance(getattr(self, attr), RetryPolicy):
                raise DefinitionError(f"step {self.name!r}: {attr} must be a RetryPolicy")
        for attr in ("timeout", "compensation_timeout"):
            value = getattr(self, attr)
            if value is None and attr == "compensation_timeout":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise DefinitionError(f"step {self.name!r}: {attr} must be a number of seconds > 0 (got {value!r})")

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
        if not isinstance(self.name, str) or not _NAME.match(self.name):
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


TIMEOUT_ACTIONS = ("compensate", "fail")


@dataclass(frozen=True)
class Wait:
    """Park the run until the signal `signal` arrives, at most `timeout` (seconds or a `timedelta`).

    No task is held and no worker is busy: the wait's deadline is a row in the database, which the
    sweeper acts on. The signal's payload (validated by `model`, when given) becomes the wait's
    result, which later steps read in `ctx.results[<wait name>]`. `approve(payload)` (default:
    every signal approves) decides: True, the saga goes on; False, it compensates what completed,
    with the rejection as the reason. `on_timeout`: "compensate" (the default), "fail" (the run is
    FAILED for an operator, who resumes it to compensate), or a dict: the saga goes on with that
    dict as the wait's result. A signal sent before its wait begins is kept, and consumed when it
    begins. `when(input)` (default: always) says whether the run waits at all: False, the wait is
    skipped (SUCCEEDED at once, result `{}`), as for an order below the limit that needs approval."""

    name: str
    signal: str
    timeout: float | timedelta
    on_timeout: str | Mapping[str, Any] = "compensate"
    model: type[BaseModel] | None = None
    approve: Callable[[dict[str, Any]], bool] | None = field(default=None, compare=False)
    when: Callable[[dict[str, Any]], bool] | None = field(default=None, compare=False)
    approve_name: str = field(default="", init=False)
    """The approve function's qualified name: what equality compares."""
    when_name: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(f"wait name {self.name!r} must be a plain name like 'manager_approval'")
        if not isinstance(self.signal, str) or not _NAME.match(self.signal):
            raise DefinitionError(f"wait {self.name!r}: signal {self.signal!r} must be a plain name like 'approval'")
        seconds = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else self.timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise DefinitionError(f"wait {self.name!r}: timeout must be a timedelta or seconds > 0 "
                                  f"(got {self.timeout!r})")
        object.__setattr__(self, "timeout", float(seconds))
        if isinstance(self.on_timeout, Mapping):
            object.__setattr__(self, "on_timeout", dict(self.on_timeout))
        elif self.on_timeout not in TIMEOUT_ACTIONS:
            raise DefinitionError(f"wait {self.name!r}: on_timeout must be 'compensate', 'fail' or a dict (the "
                                  f"result to go on with), got {self.on_timeout!r}")
        if self.model is not None and not (isinstance(self.model, type) and issubclass(self.model, BaseModel)):
            raise DefinitionError(f"wait {self.name!r}: model must be a pydantic BaseModel subclass")
        if self.approve is not None and not callable(self.approve):
            raise DefinitionError(f"wait {self.name!r}: approve must be a function of the signal's payload, "
                                  "like lambda p: p['approved']")
        object.__setattr__(self, "approve_name", getattr(self.approve, "__qualname__", "") if self.approve else "")
        if self.when is not None and not callable(self.when):
            raise DefinitionError(f"wait {self.name!r}: when must be a function of the saga's input, "
                                  "like lambda order: order['total'] > 500")
        object.__setattr__(self, "when_name", getattr(self.when, "__qualname__", "") if self.when else "")

    def applies(self, data: dict[str, Any]) -> bool:
        """Does a run with input `data` wait here (`when`), or skip the wait?"""
        return True if self.when is None else bool(self.when(data))

    @property
    def timeout_seconds(self) -> float:
        assert isinstance(self.timeout, float)
        return self.timeout

    @property
    def default_result(self) -> dict[str, Any] | None:
        """The result to go on with after a timeout, or None (compensate or fail)."""
        return dict(self.on_timeout) if isinstance(self.on_timeout, Mapping) else None

    def validate(self, payload: Any) -> dict[str, Any]:
        """The signal's payload as a JSON-ready dict, or `InvalidInput` saying what is wrong."""
        if self.model is not None:
            try:
                return self.model.model_validate(payload).model_dump(mode="json")
            except ValidationError as e:
                errors = [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()]
                summary = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'payload'}: {x['msg']}" for x in errors)
                raise InvalidInput(f"invalid payload for signal {self.signal!r} of wait {self.name!r}: {summary}",
                                   errors) from None
        if payload is None:
            return {}
        if not isinstance(payload, dict):
            raise InvalidInput(f"the payload of signal {self.signal!r} must be a JSON object, "
                               f"got {type(payload).__name__}")
        return payload

    def approves(self, payload: dict[str, Any]) -> bool:
        """Does this payload approve (the saga goes on) or reject (it compensates)?"""
        if self.approve is None:
            return True
        try:
            return bool(self.approve(payload))
        except Exception as e:  # a payload the function cannot read: refused before anything is written
            raise InvalidInput(f"signal {self.signal!r} of wait {self.name!r}: the approve function could not read "
                               f"the payload ({type(e).__name__}: {e})") from None

    @property
    def task_marker(self) -> str:
        """What the wait's row keeps in its task column: what it waits for (`wait:<signal>`)."""
        return f"wait:{self.signal}"


ChildInput = Callable[[dict[str, Any], dict[str, dict[str, Any]]], Any]


@dataclass(frozen=True)
class Child:
    """A step whose action is another registered saga, a run of its own (the *child*).

    `input(data, results)` builds the child's input from the parent's input and the results of
    the stages before this one. The step succeeds when the child is COMPLETED (its result: the
    child's results, by step name) and fails when the child is COMPENSATED. Compensating this
    step compensates the COMPLETED child through the child's own compensations; cancelling the
    parent cancels a running child, and the parent waits until the child is settled. The child's
    id is derived from the parent's id and this step's name: starting it twice makes one run."""

    name: str
    saga: Saga | str
    input: ChildInput = field(default=lambda data, results: data, compare=False)
    version: int | None = None
    """The version of a saga named by its name the child starts on; None: the newest registered when
    the child starts (a new run picks its version as `start_saga` does). A `Saga` value is its own."""
    input_name: str = field(default="", init=False)
    """The input function's qualified name: what equality compares (as `ForEach.items_name`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(f"child step name {self.name!r} must be a plain name like 'ship'")
        target = self.saga.name if isinstance(self.saga, Saga) else self.saga
        if not isinstance(target, str) or not _NAME.match(target):
            raise DefinitionError(f"child step {self.name!r}: saga must be a Saga or the name of a registered "
                                  f"saga like 'shipping' (got {self.saga!r})")
        if self.version is not None and (isinstance(self.version, bool) or not isinstance(self.version, int)
                                         or self.version < 1):
            raise DefinitionError(f"child step {self.name!r}: version must be an int >= 1 (got {self.version!r})")
        if isinstance(self.saga, Saga) and self.version not in (None, self.saga.version):
            raise DefinitionError(f"child step {self.name!r}: version {self.version} is not the version of the "
                                  f"Saga given ({self.saga.version}): give one or the other")
        if not callable(self.input):
            raise DefinitionError(f"child step {self.name!r}: input must be a function (data, results) -> dict, "
                                  "like lambda data, results: {'order_id': data['order_id']}")
        object.__setattr__(self, "input_name", getattr(self.input, "__qualname__", repr(self.input)))

    @property
    def saga_name(self) -> str:
        return self.saga.name if isinstance(self.saga, Saga) else self.saga

    @property
    def declared(self) -> Saga | None:
        """The child saga when declared as a `Saga` value (None: named, the caller resolves it)."""
        return self.saga if isinstance(self.saga, Saga) else None

    def first_stage_cycle(self, parent: str, children: ChildDefinitions,
                          chain: tuple[str, ...] = ()) -> list[str] | None:
        """The saga names of a cycle of sagas that each start with a child step, back to a saga on
        the way from `parent` (starting it would never end), or None. `children` resolves each
        child step to its definition (the caller's)."""
        chain = (*chain, parent)
        if self.saga_name in chain:
            return [*chain, self.saga_name]
        for kid in children(self).first_children():
            cycle = kid.first_stage_cycle(self.saga_name, children, chain)
            if cycle is not None:
                return cycle
        return None

    def child_input(self, data: dict[str, Any], results: dict[str, dict[str, Any]], child: Saga) -> dict[str, Any]:
        """The input of `child` (this step's definition), validated, or `InvalidInput` saying what
        is wrong (nothing is started)."""
        try:
            value = self.input(data, results)
        except Exception as e:  # the parent's input or results lack what the function reads
            raise InvalidInput(f"child step {self.name!r}: its input function failed "
                               f"({type(e).__name__}: {e})") from None
        return child.validate_input(value)


ChildDefinitions = Callable[[Child], "Saga"]
"""What a caller gives the core to resolve a `Child` step to the definition its child starts on
(`SagaRegistry.child_definition`); the core looks nothing up itself."""


def declared_child(node: Child) -> Saga:
    """The child definitions of a caller with no registry: a child declared as a `Saga` value only."""
    if node.declared is not None:
        return node.declared
    raise UnknownSaga(f"child step {node.name!r} names saga {node.saga_name!r}: no registry was given to look it up")


def child_id(parent_id: str, step: str) -> str:
    """The id of the child run step `step` of run `parent_id` starts: the same for every attempt to
    start it (a UUID of the parent's id and the step's name, so it fits the id column)."""
    return str(uuid.uuid5(_CHILDREN, f"{parent_id}/{step}"))


_CHILDREN = uuid.UUID("6f0c2f8e-5a57-4f7e-9a55-c41d0e1f0c11")


Node = Step | Parallel | ForEach | Wait | Child
"""What a saga is a sequence of."""


@dataclass(frozen=True)
class Saga:
    """A sequence of nodes (steps, parallel groups, fan-outs) under a unique name. Immutable;
    register it to make it startable. Each node is a *stage*: a stage starts when every step of
    the one before it succeeded."""

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
    _by_name: dict[str, tuple[int, Step]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _fan_outs: dict[str, tuple[int, ForEach]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _waits: dict[str, tuple[int, Wait]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _children: dict[str, tuple[int, Child]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"saga name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 100 characters)"
            )
        nodes = tuple(self.steps)
        if not nodes:
            raise DefinitionError(f"saga {self.name!r} has no steps: declare at least one Step")
        names: list[str] = []
        for stage, node in enumerate(nodes):
            if isinstance(node, Step):
                names.append(node.name)
                self._by_name[node.name] = (stage, node)
            elif isinstance(node, Parallel):
                names += [node.name, *(st.name for st in node.steps)]
                self._by_name.update({st.name: (stage, st) for st in node.steps if isinstance(st, Step)})
                self._children.update({st.name: (stage, st) for st in node.steps if isinstance(st, Child)})
            elif isinstance(node, ForEach):
                names.append(node.name)
                self._fan_outs[node.name] = (stage, node)
            elif isinstance(node, Wait):
                names.append(node.name)
                self._waits[node.name] = (stage, node)
            elif isinstance(node, Child):
                names.append(node.name)
                self._children[node.name] = (stage, node)
            else:
                raise DefinitionError(f"saga {self.name!r}: {node!r} is not a Step, Parallel, ForEach, Wait or Child")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"saga {self.name!r}: step and group names must be unique, repeated: {dupes}")
        for fan in self._fan_outs:
            clash = [n for n in names if n.startswith(f"{fan}-")]
            if clash:
                raise DefinitionError(f"saga {self.name!r}: {clash} would clash with the branches of ForEach "
                                      f"{fan!r} ({fan}-0, {fan}-1, ...): rename")
        if self.input_model is not None and not (
            isinstance(self.input_model, type) and issubclass(self.input_model, BaseModel)
        ):
            raise DefinitionError(f"saga {self.name!r}: input_model must be a pydantic BaseModel subclass")
        if self.deadline is not None and (isinstance(self.deadline, bool) or self.deadline <= 0):
            raise DefinitionError(f"saga {self.name!r}: deadline must be seconds > 0 or None")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise DefinitionError(f"saga {self.name!r}: version must be an int >= 1 (got {self.version!r})")
        object.__setattr__(self, "steps", nodes)

    @property
    def shape(self) -> list[dict[str, Any]]:
        """What a running run depends on, as JSON: its stages, their steps, actions and compensations."""
        return shape_of(self.steps)

    @property
    def fingerprint(self) -> str:
        """A short hash of `shape`: equal for the same shape, whatever module declared it."""
        return fingerprint_of(self.shape)

    # -- the rows a run has: one per step, one per branch of a fan-out

    def rows(self, data: dict[str, Any]) -> list[tuple[str, int]]:
        """(step name, stage) of every step a run with input `data` has, in stage order."""
        out: list[tuple[str, int]] = []
        for stage, node in enumerate(self.steps):
            if isinstance(node, (Step, Child)):
                out.append((node.name, stage))
            elif isinstance(node, Parallel):
                out += [(st.name, stage) for st in node.steps]
            elif isinstance(node, Wait):
                out.append((node.name, stage))
            else:
                out += [(node.branch(i), stage) for i in range(len(self.items_of(node, data)))]
        return out

    def step(self, name: str) -> Step:
        """The declaration of step (or fan-out branch) `name`."""
        return self._locate(name)[1]

    def stage_of(self, name: str) -> int:
        found = self._waits.get(name)
        if found is not None:
            return found[0]
        child = self._children.get(name)
        return child[0] if child is not None else self._locate(name)[0]

    # -- waits

    def wait(self, name: str) -> Wait | None:
        """The declaration of wait `name`, or None if `name` is not a wait."""
        found = self._waits.get(name)
        return found[1] if found is not None else None

    def waits_for(self, signal: str) -> list[Wait]:
        """The waits of this saga on `signal`, in stage order."""
        return [w for _, w in sorted(self._waits.values(), key=lambda x: x[0]) if w.signal == signal]

    def stage_node(self, stage: int) -> Node:
        return self.steps[stage]

    def child(self, name: str) -> Child | None:
        """The `Child` declaration of step `name`, or None if it is not a child step."""
        found = self._children.get(name)
        return found[1] if found is not None else None

    def item(self, name: str, data: dict[str, Any]) -> Any:
        """The item of fan-out branch `name` (None for any other step)."""
        fan, index = self._branch(name)
        if fan is None:
            return None
        return self.items_of(fan, data)[index]

    def has(self, name: str) -> bool:
        if name in self._waits or name in self._children:
            return True
        try:
            self._locate(name)
        except DefinitionError:
            return False
        return True

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

    def _branch(self, name: str) -> tuple[ForEach | None, int]:
        prefix, _, index = name.rpartition("-")
        found = self._fan_outs.get(prefix)
        if found is None or not index.isdigit():
            return None, -1
        return found[1], int(index)

    def _locate(self, name: str) -> tuple[int, Step]:
        found = self._by_name.get(name)
        if found is not None:
            return found
        prefix = name.rpartition("-")[0]
        fan = self._fan_outs.get(prefix)
        if fan is not None and self._branch(name)[0] is not None:
            return fan[0], fan[1].step
        if name in self._children:
            raise DefinitionError(f"step {name!r} of saga {self.name!r} is a child saga, not a task step")
        raise DefinitionError(f"saga {self.name!r} has no step {name!r}")

    def index_of(self, step_name: str) -> int:
        """The stage of `step_name` (of a line of single steps: its position)."""
        return self.stage_of(step_name)

    def validate_input(self, data: Any, children: ChildDefinitions = declared_child) -> dict[str, Any]:
        """The input as a JSON-ready dict, or `InvalidInput` saying what is wrong. `children`
        resolves the first stage's child steps, whose input is checked here too."""
        if self.input_model is not None:
            try:
                model = self.input_model.model_validate(data)
            except ValidationError as e:
                errors = [
                    {"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in e.errors()
                ]
                summary = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'input'}: {x['msg']}" for x in errors)
                raise InvalidInput(f"invalid input for saga {self.name!r}: {summary}", errors) from None
            clean: dict[str, Any] = model.model_dump(mode="json")
        elif not isinstance(data, dict):
            raise InvalidInput(f"input for saga {self.name!r} must be a JSON object, got {type(data).__name__}")
        else:
            clean = data
        for _, fan in self._fan_outs.values():
            self.items_of(fan, clean)  # the fan-out's items are there, a list, within bounds
        for first in self.first_children():  # a first child's input is known at the door: refuse it there
            try:
                if first.first_stage_cycle(self.name, children) is None:  # a cycle fails the step when it starts
                    first.child_input(clean, {}, children(first))
            except UnknownSaga:
                pass  # not registered in this process: the step fails with that reason when it starts
        return clean

    def first_children(self) -> list[Child]:
        """The child steps of the first stage (started with the run itself)."""
        first = self.steps[0]
        if isinstance(first, Child):
            return [first]
        if isinstance(first, Parallel):
            return [st for st in first.steps if isinstance(st, Child)]
        return []


class SagaRegistry:
    """(name, version) → definition. The orchestrator and every worker look definitions up here:
    `get(name)` is the newest version, `get(name, version)` the one a run started with."""

    def __init__(self) -> None:
        self._sagas: dict[str, dict[int, Saga]] = {}

    def register(self, saga: Saga) -> Saga:
        """Register `saga`; the same shape under the same name and version again (a module imported
        twice) returns the one registered; another shape raises `VersionConflict` saying what changed."""
        if not isinstance(saga, Saga):
            raise DefinitionError(f"only Saga values can be registered (got {saga!r})")
        versions = self._sagas.setdefault(saga.name, {})
        existing = versions.get(saga.version)
        if existing is not None:
            if existing.fingerprint != saga.fingerprint:
                raise VersionConflict(conflict_message(saga.name, saga.version, existing.shape, saga.shape,
                                                       "registered in this process"))
            if existing != saga:
                raise DefinitionError(
                    f"saga {saga.name!r} version {saga.version} is already registered in this process with the "
                    "same shape but other retry policies, timeouts, deadline or input model: a process holds one "
                    "definition per version, declare it once")
            return existing
        for node in saga.steps:  # a child declared as a Saga value is registered with its parent
            for kid in (node.steps if isinstance(node, Parallel) else (node,)):
                if isinstance(kid, Child) and isinstance(kid.saga, Saga):
                    self.register(kid.saga)
        versions[saga.version] = saga
        return saga

    def definition_of(self, run: RunOf) -> Saga:
        """The definition that decides `run`: its saga type at the version it started with (or was
        moved to), never the newest. `UnknownSagaVersion` if this process does not hold it."""
        return self.get(run.saga_type, run.saga_version)

    def child_definition(self, node: Child) -> Saga:
        """The definition the child of `node` starts on: the `Saga` it declares, else the version
        of the named saga it declares, else the newest registered (a new run, as `start_saga`)."""
        if node.declared is not None:
            return node.declared
        return self.get(node.saga_name, node.version) if node.version is not None else self.newest(node.saga_name)

    def newest(self, name: str) -> Saga:
        """The newest version of `name`: what a new run starts on when no version is asked for."""
        return self.get(name)

    def definitions(self) -> list[Saga]:
        """Every registered version of every saga, by name then version."""
        return [v[n] for _, v in sorted(self._sagas.items()) for n in sorted(v)]

    def get(self, name: str, version: int | None = None) -> Saga:
        """Version `version` of `name` (None: the newest; the library says `newest` for that)."""
        versions = self._sagas.get(name)
        if not versions:
            known = ", ".join(sorted(self._sagas)) or "none"
            raise UnknownSaga(f"unknown saga {name!r} (registered: {known})")
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            have = ", ".join(str(v) for v in sorted(versions))
            raise UnknownSagaVersion(f"saga {name!r} has no version {version} in this process (it has: {have})",
                                     name, version) from None

    def has(self, name: str, version: int) -> bool:
        return version in self._sagas.get(name, {})

    def unregister(self, name: str, version: int) -> Saga:
        """Take a version out of this process (a worker that must stop taking it; tests). Returns it."""
        try:
            return self._sagas.get(name, {}).pop(version)
        except KeyError:
            raise UnknownSagaVersion(f"saga {name!r} has no version {version} in this process", name,
                                     version) from None

    def versions(self, name: str) -> list[int]:
        """The versions of `name` registered, oldest first (empty if none)."""
        return sorted(self._sagas.get(name, {}))

    def held(self) -> dict[str, list[int]]:
        """Every saga name and the versions registered (what a worker announces)."""
        return {n: sorted(v) for n, v in sorted(self._sagas.items()) if v}

    def names(self) -> list[str]:
        return sorted(n for n, v in self._sagas.items() if v)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self._sagas.get(name))


registry = SagaRegistry()
"""The process-wide registry `Saga` definitions are registered in by `register_saga`."""


def register_saga(saga: Saga) -> Saga:
    return registry.register(saga)


def definition_of(run: RunOf) -> Saga:
    """The definition that decides `run` (its type and the version it recorded), from the process's
    registry: what every caller outside the core uses to get it."""
    return registry.definition_of(run)


def child_definition(node: Child) -> Saga:
    """The definition a `Child` step starts its child on, from the process's registry."""
    return registry.child_definition(node)
