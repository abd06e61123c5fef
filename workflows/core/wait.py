"""A `Wait`: a node that parks the run until a named signal or its deadline. Pure."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from workflows.core.errors import DefinitionError, InvalidInput
from workflows.core.names import NAME
from workflows.core.typed import field_errors, summary

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
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(f"wait name {self.name!r} must be a plain name like 'manager_approval'")
        if not isinstance(self.signal, str) or not NAME.match(self.signal):
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
                errors = field_errors(e)
                raise InvalidInput(f"invalid payload for signal {self.signal!r} of wait {self.name!r}: "
                                   f"{summary(errors, 'payload')}", errors) from None
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
