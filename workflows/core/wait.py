"""A `Wait`: a node that parks the run until a named signal or its deadline; `OnEvent`: a
choreographed event that answers it as its signal would. Pure."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError

from workflows.core.errors import DefinitionError, InvalidInput
from workflows.core.names import NAME
from workflows.core.sealed import check_paths
from workflows.core.typed import field_errors, summary

TIMEOUT_ACTIONS = ("compensate", "fail")
EVENT_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,59}$")
"""A choreography's event type: PascalCase (the same rule as `choreography.envelope.EVENT_TYPE`)."""
FLOW = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
MATCH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}(\.[A-Za-z_][A-Za-z0-9_]{0,99}){0,4}$")


@dataclass(frozen=True)
class OnEvent:
    """A choreographed event that answers a wait, as its signal would:

        Wait("payment", signal="payment_settled", timeout=600,
             on_event=OnEvent("PaymentSettled", match="order_id"), approve=lambda p: p["approved"])

    Each event of type `event_type` (of the choreography `choreography`, or of any that publishes
    that type) is delivered to the wait's run as the signal `Wait.signal`, its payload as the
    signal's payload and `event-<event id>` as the signal's idempotency key. `match` is a key of the
    event's payload (a dotted path for a nested one: "order.order_id") whose value names the run:
    its saga id, or else the idempotency key it was started under (a business id, such as an
    order's). So an event sent before the wait begins is kept, a redelivered one is a duplicate,
    and a timeout racing it is resolved once, exactly as for a signal. Immutable."""

    event_type: str
    match: str
    choreography: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event_type, str) or not EVENT_TYPE.match(self.event_type):
            raise DefinitionError(f"OnEvent: event type {self.event_type!r} must be PascalCase letters and digits, "
                                  "like 'PaymentSettled'")
        if not isinstance(self.match, str) or not MATCH.match(self.match):
            raise DefinitionError(f"OnEvent({self.event_type!r}): match {self.match!r} must name a key of the "
                                  "event's payload, like 'order_id' (or a dotted path, like 'order.order_id')")
        if self.choreography is not None and (not isinstance(self.choreography, str)
                                              or not FLOW.match(self.choreography)):
            raise DefinitionError(f"OnEvent({self.event_type!r}): choreography {self.choreography!r} must be the "
                                  "name of a choreography, like 'order_parallel'")

    def run_ref(self, payload: Mapping[str, Any]) -> str | None:
        """The value at `match` in an event's payload, as text: the run's id or idempotency key
        (None: the payload has no such key, or its value is not a string or a number)."""
        value: Any = payload
        for part in self.match.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        text = str(value)
        return text if 0 < len(text) <= 200 else None

    def answers(self, choreography: str, event_type: str) -> bool:
        """Is an event of `event_type` published in `choreography` one for this wait?"""
        return event_type == self.event_type and self.choreography in (None, choreography)


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
    skipped (SUCCEEDED at once, result `{}`), as for an order below the limit that needs approval.
    `on_event` (an `OnEvent`): a choreographed event also answers it, as the signal would.
    `sensitive` (dotted paths into the payload, like `("card",)`): sealed before the signal is
    recorded, as a saga's `sensitive` input fields are; later steps read them in clear."""

    name: str
    signal: str
    timeout: float | timedelta
    on_timeout: str | Mapping[str, Any] = "compensate"
    model: type[BaseModel] | None = None
    approve: Callable[[dict[str, Any]], bool] | None = field(default=None, compare=False)
    when: Callable[[dict[str, Any]], bool] | None = field(default=None, compare=False)
    on_event: OnEvent | None = None
    sensitive: tuple[str, ...] = ()
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
        object.__setattr__(self, "sensitive", check_paths(f"wait {self.name!r}", self.sensitive))
        if self.on_event is not None and not isinstance(self.on_event, OnEvent):
            raise DefinitionError(f"wait {self.name!r}: on_event must be an OnEvent, like "
                                  "OnEvent('PaymentSettled', match='order_id')")

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
