"""Saga declarations: frozen values, validated when declared. No I/O here."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
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
    success is recorded, then compensated), then the group's completed steps are compensated
    concurrently, then the steps before the group, newest first."""

    name: str
    steps: tuple[Step, ...] | list[Step]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(f"parallel group name {self.name!r} must be a plain name like 'prepare'")
        steps = tuple(self.steps)
        if not steps:
            raise DefinitionError(f"parallel group {self.name!r} has no steps: give it at least one Step")
        for st in steps:
            if not isinstance(st, Step):
                raise DefinitionError(f"parallel group {self.name!r}: {st!r} is not a Step (groups do not nest)")
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


Node = Step | Parallel | ForEach
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
                self._by_name.update({st.name: (stage, st) for st in node.steps})
            elif isinstance(node, ForEach):
                names.append(node.name)
                self._fan_outs[node.name] = (stage, node)
            else:
                raise DefinitionError(f"saga {self.name!r}: {node!r} is not a Step, Parallel or ForEach")
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
            if isinstance(node, Step):
                out.append((node.name, stage))
            elif isinstance(node, Parallel):
                out += [(st.name, stage) for st in node.steps]
            else:
                out += [(node.branch(i), stage) for i in range(len(self.items_of(node, data)))]
        return out

    def step(self, name: str) -> Step:
        """The declaration of step (or fan-out branch) `name`."""
        return self._locate(name)[1]

    def stage_of(self, name: str) -> int:
        return self._locate(name)[0]

    def item(self, name: str, data: dict[str, Any]) -> Any:
        """The item of fan-out branch `name` (None for any other step)."""
        fan, index = self._branch(name)
        if fan is None:
            return None
        return self.items_of(fan, data)[index]

    def has(self, name: str) -> bool:
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
        raise DefinitionError(f"saga {self.name!r} has no step {name!r}")

    def index_of(self, step_name: str) -> int:
        """The stage of `step_name` (of a line of single steps: its position)."""
        return self.stage_of(step_name)

    def validate_input(self, data: Any) -> dict[str, Any]:
        """The input as a JSON-ready dict, or `InvalidInput` saying what is wrong."""
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
        return clean


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
        versions[saga.version] = saga
        return saga

    def get(self, name: str, version: int | None = None) -> Saga:
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
