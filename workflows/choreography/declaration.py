"""Declaring a choreography: its name, which events end it how, and who reacts to what.

    shop = Choreography("order_parallel", completed={"OrderCompleted"},
                        compensating={"InventoryReservationFailed", "PaymentFailed"},
                        compensated={"OrderCancelled"}, schemas={"OrderCreated": Order}, deadline=60)
    payment = shop.service("payment", retry=RetryPolicy(max_attempts=5))

    @payment.subscribe("OrderCreated")
    def charge(ctx: EventContext, event: Envelope) -> None:
        ...
        ctx.publish("PaymentProcessed", {"payment_id": p.id})

There is no coordinator: each service declares the events it reacts to, and its handler publishes
what happened. The declaration says only what the events *mean* for the saga's state, so the
state can be derived from the history (see `history.derive`). Validated when declared.
"""
from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from workflows.choreography import publishing, reactions
from workflows.choreography.envelope import EVENT_TYPE, NAME, InvalidEvent
from workflows.core.errors import DefinitionError, UnknownSaga
from workflows.core.retry import RetryPolicy
from workflows.core.sealed import check_paths, unsealed_errors
from workflows.core.typed import field_errors, summary

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

Handler = Callable[..., Any]
"""`fn(ctx: EventContext, event: Envelope) -> dict | None`, or the same as `async def`."""

DEFAULT_HANDLER_POLICY = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff=2.0, max_interval=60.0)
"""5 tries, 1 s, 2 s, 4 s, 8 s apart (full jitter); then the event is dead-lettered."""


@dataclass(frozen=True)
class Subscription:
    """One service's handler for one event type of one choreography. Immutable."""

    choreography: str
    event_type: str
    service: str
    handler: Handler
    retry: RetryPolicy

    @property
    def name(self) -> str:
        return f"{self.service}.{getattr(self.handler, '__name__', 'handler')}"

    def call(self, ctx: Any, event: Any) -> Any:
        """Run the handler; an `async def` handler runs to completion in its own event loop."""
        out = self.handler(ctx, event)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        return out


async def _await(awaitable: Any) -> Any:
    return await awaitable


@dataclass(frozen=True)
class Service:
    """A service's view of a choreography: `@service.subscribe("EventType")` declares a handler."""

    choreography: Choreography
    name: str
    retry: RetryPolicy

    def subscribe(self, event_type: str, handler: Handler | None = None, *,
                  retry: RetryPolicy | None = None) -> Any:
        """Declare `handler` for `event_type` (as a decorator when `handler` is omitted).

        The decorated function is returned unchanged, so it can be stacked for several event
        types and called directly in a test.
        """
        def wrap(fn: Handler) -> Handler:
            self.choreography._add(Subscription(self.choreography.name, event_type, self.name, fn,
                                                retry or self.retry))
            return fn

        return wrap(handler) if handler is not None else wrap


@dataclass
class Choreography:
    """A saga run by events. Registered under its name when declared.

    The sets say what an event means for the saga's derived state; an event in none of them is
    progress. Once nothing is left to handle (every published event handled by every subscriber):
    COMPLETED after a `completed` event; COMPENSATED after a `compensating` event (and, when
    declared, a `compensated` one). A `failed` event, or a handler that ran out of retries, makes
    it FAILED: an operator must act.
    """

    name: str
    completed: Iterable[str]
    compensating: Iterable[str] = ()
    compensated: Iterable[str] = ()
    failed: Iterable[str] = ()
    events: Iterable[str] = ()
    """Event types published but subscribed by no service (they are still validated and recorded)."""
    schemas: dict[str, type[BaseModel]] = field(default_factory=dict)
    """Payload models by event type, checked on publish and on receipt."""
    sensitive: Iterable[str] | Mapping[str, Iterable[str]] = ()
    """Payload fields sealed before an event is written or sent (`runtime.sealing`), as dotted paths:
    `("payment.card", "order.payment.card")` in every event type's payload (a path an event does not
    have is skipped), or `{"OrderPlaced": ("payment.card",)}` per event type. Handlers read them in clear."""
    deadline: float = 300.0
    """Seconds without any new event after which a non-terminal saga is reported stuck."""
    description: str = ""
    subscriptions: dict[tuple[str, str], Subscription] = field(default_factory=dict, repr=False)
    """(event type, service) -> subscription."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(f"choreography name {self.name!r} must be lower_snake_case (a-z, 0-9, _), "
                                  "at most 40 characters, no dots")
        for attr in ("completed", "compensating", "compensated", "failed", "events"):
            value = frozenset([getattr(self, attr)] if isinstance(getattr(self, attr), str) else getattr(self, attr))
            for t in value:
                _check_event_type(self.name, t)
            setattr(self, attr, value)
        if not self.completed:
            raise DefinitionError(f"choreography {self.name!r}: name the event type(s) that complete it "
                                  "(completed={'OrderFulfilled'})")
        sets = {k: getattr(self, k) for k in ("completed", "compensating", "compensated", "failed")}
        for a in sets:
            for b in sets:
                if a < b and sets[a] & sets[b]:
                    raise DefinitionError(f"choreography {self.name!r}: {sorted(sets[a] & sets[b])} cannot be "
                                          f"both {a} and {b}")
        for t, model in self.schemas.items():
            _check_event_type(self.name, t)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise DefinitionError(f"choreography {self.name!r}: schema of {t!r} must be a pydantic model")
        self.sensitive = _sensitive(self.name, self.sensitive)
        if not isinstance(self.deadline, (int, float)) or self.deadline <= 0:
            raise DefinitionError(f"choreography {self.name!r}: deadline must be seconds > 0 (got {self.deadline!r})")
        choreographies.register(self)

    def service(self, name: str, *, retry: RetryPolicy | None = None) -> Service:
        """The service `name` (its queue is `<namespace>.<name>`), with its handlers' default policy."""
        if not isinstance(name, str) or not NAME.match(name):
            raise DefinitionError(f"service name {name!r} must be lower_snake_case, at most 40 characters")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise DefinitionError(f"service {name!r}: retry must be a RetryPolicy")
        return Service(self, name, retry or DEFAULT_HANDLER_POLICY)

    def _add(self, sub: Subscription) -> None:
        _check_event_type(self.name, sub.event_type)
        if not callable(sub.handler):
            raise DefinitionError(f"{self.name}: the handler of {sub.event_type!r} must be a function")
        if not isinstance(sub.retry, RetryPolicy):
            raise DefinitionError(f"{self.name}: retry of {sub.name!r} must be a RetryPolicy")
        params = inspect.signature(sub.handler).parameters
        if len(params) < 2:
            raise DefinitionError(f"handler {sub.name!r} must take (ctx, event)")
        old = self.subscriptions.get((sub.event_type, sub.service))
        if old is not None and getattr(old.handler, "__qualname__", None) != getattr(sub.handler, "__qualname__", None):
            raise DefinitionError(
                f"{self.name}: service {sub.service!r} already handles {sub.event_type!r} with {old.name!r}; "
                "a service handles an event type once: do both things in one handler")
        self.subscriptions[(sub.event_type, sub.service)] = sub

    def start(self, event_type: str, payload: dict[str, Any], *, saga_id: str | None = None,
              idempotency_key: str | None = None, session: Session | None = None,
              connection: Connection | None = None) -> str:
        """Start a saga by publishing its first event (validated, written, relayed). Returns its id.

        `session=` or `connection=` (the caller's SQLAlchemy transaction, on the saga store's database):
        the saga, its first event's outbox row and its history commit or roll back with the caller's
        rows, and the event is relayed only after the caller's transaction committed."""
        if session is not None and connection is not None:
            raise InvalidEvent("give session= or connection=, not both")
        return publishing.start(self, event_type, payload, saga_id=saga_id, idempotency_key=idempotency_key,
                                tx=session if session is not None else connection)

    # ------------------------------------------------------------ questions

    def sensitive_paths(self, event_type: str) -> tuple[str, ...]:
        """The payload paths of `event_type` to seal: those of every event type, then its own."""
        sensitive: dict[str, tuple[str, ...]] = self.sensitive  # type: ignore[assignment]
        return tuple(dict.fromkeys([*sensitive.get(ALL_EVENTS, ()), *sensitive.get(event_type, ())]))

    def sensitive_declared(self) -> list[str]:
        """Every declared sensitive path, as `path` (every event type) or `EventType:path`."""
        sensitive: dict[str, tuple[str, ...]] = self.sensitive  # type: ignore[assignment]
        return [p if t == ALL_EVENTS else f"{t}:{p}" for t, paths in sensitive.items() for p in paths]

    def subscription(self, event_type: str, service: str) -> Subscription | None:
        sub = self.subscriptions.get((event_type, service))
        if sub is None and service == reactions.SERVICE and self.answers_waits(event_type):
            return Subscription(self.name, event_type, reactions.SERVICE, reactions.answer_waits,
                                reactions.ANSWER_POLICY)
        return sub

    def consumers(self, event_type: str) -> list[str]:
        """The services subscribed to `event_type`, sorted: each receives its own copy (`saga_waits`
        too, when an orchestrated saga's wait is answered by it: `OnEvent`)."""
        subscribed = {s for (t, s) in self.subscriptions if t == event_type}
        if self.answers_waits(event_type):
            subscribed.add(reactions.SERVICE)
        return sorted(subscribed)

    def answers_waits(self, event_type: str) -> bool:
        """Does an event of that type answer a registered saga's wait (`OnEvent`)?"""
        return event_type in self._own_event_types() | reactions.named_event_types(self.name) and \
            bool(reactions.waits_for_event(self.name, event_type))

    def event_types(self) -> frozenset[str]:
        """Every event type this choreography knows (subscribed, declared, given a meaning, or named
        by a wait's `OnEvent(..., choreography=<this one>)`)."""
        return frozenset(self._own_event_types() | reactions.named_event_types(self.name))

    def _own_event_types(self) -> set[str]:
        subscribed = {t for (t, _) in self.subscriptions}
        return set(subscribed | set(self.schemas) | self.completed | self.compensating  # type: ignore[operator]
                   | self.compensated | self.failed | self.events)  # type: ignore[operator]

    def validate(self, event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Check that `event_type` belongs here and its payload fits its schema. Raises `InvalidEvent`."""
        if event_type not in self.event_types():
            raise InvalidEvent(f"{event_type!r} is not an event of choreography {self.name!r}: subscribe a "
                               "service to it, or declare it in `events=`")
        model = self.schemas.get(event_type)
        if model is None:
            return payload
        try:
            return model.model_validate(payload).model_dump(mode="json")
        except ValidationError as e:
            # a received payload's sealed field was checked in clear when it was published
            errors = unsealed_errors(field_errors(e), payload)
            if not errors and isinstance(payload, dict):
                return payload
            raise InvalidEvent(f"invalid payload for {self.name}.{event_type}: {summary(errors, 'payload')}") from None


ALL_EVENTS = "*"
"""The key of `Choreography.sensitive` (normalised) for the paths sealed in every event type."""


def _sensitive(name: str, declared: Any) -> dict[str, tuple[str, ...]]:
    """`sensitive=` as {event type or ALL_EVENTS: paths}, or `DefinitionError` naming what is wrong."""
    owner = f"choreography {name!r}"
    if isinstance(declared, Mapping):
        out: dict[str, tuple[str, ...]] = {}
        for t, paths in declared.items():
            _check_event_type(name, t)
            out[t] = check_paths(f"{owner} event {t!r}", paths)
        return out
    paths = check_paths(owner, declared)
    return {ALL_EVENTS: paths} if paths else {}


def _check_event_type(choreography: str, t: Any) -> None:
    if not isinstance(t, str) or not EVENT_TYPE.match(t):
        raise DefinitionError(f"choreography {choreography!r}: event type {t!r} must be PascalCase letters and "
                              "digits (OrderCreated), at most 60 characters")


class ChoreographyRegistry:
    def __init__(self) -> None:
        self._by_name: dict[str, Choreography] = {}

    def register(self, ch: Choreography) -> None:
        old = self._by_name.get(ch.name)
        if old is not None and old is not ch:
            # A module imported twice (e.g. as a script and as a module) declares the same thing again.
            same = (old.completed, old.compensating, old.compensated, old.failed) == \
                   (ch.completed, ch.compensating, ch.compensated, ch.failed)
            if not same:
                raise DefinitionError(f"a different choreography is already registered as {ch.name!r}")
            ch.subscriptions = old.subscriptions
        self._by_name[ch.name] = ch

    def get(self, name: str) -> Choreography:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise UnknownSaga(f"unknown choreography {name!r} (registered: {known})") from None

    def all(self) -> list[Choreography]:
        return list(self._by_name.values())

    def routes(self) -> dict[str, list[tuple[str, str]]]:
        """service -> [(choreography, event type)] it subscribes to, for its queue's bindings
        (`saga_waits`: the event types that answer orchestrated waits)."""
        out: dict[str, list[tuple[str, str]]] = {}
        for ch in self._by_name.values():
            for (t, s) in ch.subscriptions:
                out.setdefault(s, []).append((ch.name, t))
            for t in sorted(ch.event_types()):
                if ch.answers_waits(t) and (t, reactions.SERVICE) not in ch.subscriptions:
                    out.setdefault(reactions.SERVICE, []).append((ch.name, t))
        return {s: sorted(v) for s, v in sorted(out.items())}

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


choreographies = ChoreographyRegistry()
