"""Saga declarations: frozen values, validated when declared. No I/O here."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from workflows.core.errors import DefinitionError, InvalidInput, UnknownSaga
from workflows.core.retry import DEFAULT_ACTION_POLICY, DEFAULT_COMPENSATION_POLICY, RetryPolicy

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


class HasTaskName(Protocol):
    name: str


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
class Saga:
    """An ordered list of steps under a unique name. Immutable; register it to make it startable."""

    name: str
    steps: tuple[Step, ...] | list[Step]
    input_model: type[BaseModel] | None = None
    """A pydantic model the input must satisfy; without one, any JSON object is accepted."""
    deadline: float | None = None
    """Seconds after start after which a still-running saga is cancelled and compensated."""
    description: str = ""
    _by_name: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DefinitionError(
                f"saga name {self.name!r} must start with a letter or '_' and use only "
                "letters, digits, '_', '.', '-' (at most 100 characters)"
            )
        steps = tuple(self.steps)
        if not steps:
            raise DefinitionError(f"saga {self.name!r} has no steps: declare at least one Step")
        for s in steps:
            if not isinstance(s, Step):
                raise DefinitionError(f"saga {self.name!r}: {s!r} is not a Step")
        names = [s.name for s in steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"saga {self.name!r}: step names must be unique, repeated: {dupes}")
        if self.input_model is not None and not (
            isinstance(self.input_model, type) and issubclass(self.input_model, BaseModel)
        ):
            raise DefinitionError(f"saga {self.name!r}: input_model must be a pydantic BaseModel subclass")
        if self.deadline is not None and (isinstance(self.deadline, bool) or self.deadline <= 0):
            raise DefinitionError(f"saga {self.name!r}: deadline must be seconds > 0 or None")
        object.__setattr__(self, "steps", steps)
        self._by_name.update({s.name: i for i, s in enumerate(steps)})

    def index_of(self, step_name: str) -> int:
        try:
            return self._by_name[step_name]
        except KeyError:
            raise DefinitionError(f"saga {self.name!r} has no step {step_name!r}") from None

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
            return model.model_dump(mode="json")
        if not isinstance(data, dict):
            raise InvalidInput(f"input for saga {self.name!r} must be a JSON object, got {type(data).__name__}")
        return data


class SagaRegistry:
    """Name → definition. The orchestrator and every worker look definitions up here."""

    def __init__(self) -> None:
        self._sagas: dict[str, Saga] = {}

    def register(self, saga: Saga) -> Saga:
        if not isinstance(saga, Saga):
            raise DefinitionError(f"only Saga values can be registered (got {saga!r})")
        existing = self._sagas.get(saga.name)
        if existing is not None and existing != saga:
            raise DefinitionError(f"a different saga is already registered as {saga.name!r}")
        self._sagas[saga.name] = saga
        return saga

    def get(self, name: str) -> Saga:
        try:
            return self._sagas[name]
        except KeyError:
            known = ", ".join(sorted(self._sagas)) or "none"
            raise UnknownSaga(f"unknown saga {name!r} (registered: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._sagas)

    def __contains__(self, name: object) -> bool:
        return name in self._sagas


registry = SagaRegistry()
"""The process-wide registry `Saga` definitions are registered in by `register_saga`."""


def register_saga(saga: Saga) -> Saga:
    return registry.register(saga)
