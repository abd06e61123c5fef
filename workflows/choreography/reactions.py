"""Where choreography meets orchestration: an event that answers an orchestrated wait, and a
handler that starts an orchestrated saga.

    Wait("payment", signal="payment_settled", timeout=600,
         on_event=OnEvent("PaymentSettled", match="order_id"))        # the event answers the wait

    @fulfillment.subscribe("OrderPlaced")
    def fulfil(ctx: EventContext, event: Envelope) -> None:
        ctx.start_saga("order_fulfilment", event.payload, saga_id=event.payload["order_id"])

**Answering waits.** Every registered saga's `Wait(on_event=OnEvent(...))` subscribes the service
`saga_waits` (queue `<namespace>.saga_waits`) to that event type, in the choreography it names
(or in every one that knows the type). Its handler, `answer_waits`, finds the run the event names
(the payload's `match` key: a saga id, else an idempotency key) and sends it the wait's signal
through the one signal path (`runtime.signals.signal`), with `event-<event id>` as the signal's
idempotency key. So an event that comes before the run reaches its wait is kept and consumed when
the wait begins, a redelivered event is a duplicate, and a timeout racing it is decided once on the
run's version, as for any signal. The signal commits before the handler's own transaction (the
handling is then a duplicate only once that commits), so a process killed in between sends the same
signal again on redelivery: a duplicate, which republishes what the first one dispatched.

**Starting a saga.** `ctx.start_saga` (`start_saga` here) writes the run in the handler's own
transaction (a savepoint of it), with `SagaStarted.cause` naming the event, the flow and the
choreographed saga; the choreography's history gets `OrchestratedSagaStarted` in the same commit.
Step 1 is published after the commit; a process killed in between leaves it to the sweeper.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import kombu.exceptions

from workflows.choreography import history
from workflows.choreography.envelope import Envelope, InvalidEvent
from workflows.core.definition import Saga, Wait, registry
from workflows.core.errors import DefinitionError, IdempotencyConflict, InvalidInput, NotWaiting, SagaIdTaken
from workflows.core.registry import definition_of
from workflows.core.retry import RetryPolicy
from workflows.runtime.container import get_runtime
from workflows.runtime.sealing import seal_input
from workflows.runtime.signals import signal
from workflows.store.events import EventUnit

log = logging.getLogger("workflows.choreography")

SERVICE = "saga_waits"
"""The service that delivers events to orchestrated waits (its queue: `<namespace>.saga_waits`)."""

ANSWER_POLICY = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff=2.0, max_interval=30.0)
"""For a store or broker hiccup while signalling, and for an event naming a run not started yet
(1, 2, 4, 8 s: about 15 s for its start to commit); a payload the wait refuses is dead-lettered at once."""


class RunNotStartedYet(Exception):
    """The event names a run that does not exist (yet): retried by `ANSWER_POLICY`, since the run may
    be starting in another service's transaction (two reactions to one event run side by side)."""


class Named(Protocol):
    @property
    def name(self) -> str: ...

    def sensitive_paths(self, event_type: str) -> tuple[str, ...]: ...


class EventContext(Protocol):
    """What a reaction reads of a handler's context (a `context.EventContext`)."""

    @property
    def event(self) -> Envelope: ...

    @property
    def service(self) -> str: ...

    @property
    def choreography(self) -> Named: ...

    @property
    def unit(self) -> EventUnit: ...

    @property
    def session(self) -> Any: ...

    @property
    def saga_id(self) -> str: ...

    @property
    def attempt(self) -> int: ...

    @property
    def idempotency_key(self) -> str: ...

    @property
    def started(self) -> list[str]: ...


def waits_for_event(choreography: str, event_type: str) -> list[tuple[str, Wait]]:
    """(saga name, wait) of every registered version whose wait an event of that type and flow answers."""
    out: list[tuple[str, Wait]] = []
    for name in registry.names():
        for version in registry.versions(name):
            for w in registry.get(name, version).plan.waits:
                if w.on_event is not None and w.on_event.answers(choreography, event_type) and (name, w) not in out:
                    out.append((name, w))
    return out


def named_event_types(choreography: str) -> set[str]:
    """Event types a wait names with this very choreography (`OnEvent(..., choreography=...)`)."""
    return {w.on_event.event_type for _, w in _on_event_waits()
            if w.on_event is not None and w.on_event.choreography == choreography}


def check_on_events(known: dict[str, frozenset[str]]) -> None:
    """Every `OnEvent` can be answered: its choreography is registered (by name), or some
    choreography knows its event type. `known`: choreography name -> its event types. Raises
    `DefinitionError` saying which wait and what to do."""
    for name, w in _on_event_waits():
        on = w.on_event
        assert on is not None
        if on.choreography is not None and on.choreography not in known:
            raise DefinitionError(f"saga {name!r}, wait {w.name!r}: OnEvent names choreography {on.choreography!r}, "
                                  f"which is not declared (declared: {', '.join(sorted(known)) or 'none'}); import "
                                  "the module that declares it before installing")
        if on.choreography is None and not any(on.event_type in types for types in known.values()):
            raise DefinitionError(f"saga {name!r}, wait {w.name!r}: no choreography publishes {on.event_type!r}; "
                                  "declare it in one (events={...}) or name it: OnEvent(..., choreography=...)")


def _on_event_waits() -> list[tuple[str, Wait]]:
    return [(name, w) for name in registry.names() for version in registry.versions(name)
            for w in registry.get(name, version).plan.waits if w.on_event is not None]


def answer_waits(ctx: EventContext, event: Envelope) -> dict[str, Any]:
    """The `saga_waits` handler: send the event to every run it names, as its wait's signal.

    Returns what happened, recorded in the choreography's history (`EventHandled.result`):
    `answered` (saga id, signal, duplicate, the run's state), `refused` (the run is not waiting
    for it: its wait is over, or it timed out first), `unmatched` (no run has that id or key, after
    `ANSWER_POLICY`'s attempts: an event that comes while its run is being started waits for it)."""
    rt = get_runtime()
    answered: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    unmatched: list[str] = []
    done: set[str] = set()
    targets = waits_for_event(ctx.choreography.name, event.event_type)
    for ref in dict.fromkeys(w.on_event.run_ref(event.payload) for _, w in targets if w.on_event is not None):
        if ref is None:
            continue
        saga_id = _run_named(rt, ref, {name for name, _ in targets})
        if saga_id is None:
            unmatched.append(ref)
            continue
        if saga_id in done:
            continue
        done.add(saga_id)
        run = rt.store.load(saga_id)
        wait = next((w for w in definition_of(run).plan.waits
                     if w.on_event is not None and w.on_event.answers(ctx.choreography.name, event.event_type)), None)
        if wait is None:  # the run's own version has no such wait (an older version of the saga)
            refused.append({"saga_id": saga_id, "reason": f"its version has no wait for {event.event_type!r}"})
            continue
        who = f"event {event.event_type} of {ctx.choreography.name} {event.saga_id}"
        try:
            sent = signal(saga_id, wait.signal, event.payload, idempotency_key=f"event-{event.event_id}", who=who,
                          also_sealed=ctx.choreography.sensitive_paths(event.event_type))  # sealed stays sealed
        except NotWaiting as e:  # its wait is over (answered, timed out, cancelled): recorded in its history
            refused.append({"saga_id": saga_id, "signal": wait.signal, "reason": str(e)})
            continue
        except InvalidInput as e:  # the wait's model or approve refuses the payload: never retried
            raise InvalidEvent(f"{event.event_type} cannot answer wait {wait.name!r} of saga {saga_id}: {e}") from None
        answered.append({"saga_id": saga_id, "signal": wait.signal, "signal_id": sent.signal.id,
                         "duplicate": sent.duplicate, "state": sent.state})
    if unmatched and ctx.attempt < ANSWER_POLICY.max_attempts:  # the signals already sent repeat as duplicates
        raise RunNotStartedYet(f"{event.event_type} names no run yet: {', '.join(unmatched)} (attempt {ctx.attempt})")
    if not targets or (not answered and not refused and not unmatched):
        log.info("%s answered no wait: no run named in its payload", event.event_type,
                 extra={"saga_id": event.saga_id, "step": event.event_type})
    return {"answered": answered, "refused": refused, "unmatched": unmatched}


def _run_named(rt: Any, ref: str, saga_types: set[str]) -> str | None:
    """The run `ref` names: a run of one of `saga_types` with that id, else with that idempotency key."""
    if rt.store.saga_type(ref) in saga_types:
        return ref
    by_key = rt.store.saga_id_for_key(ref)
    if by_key is not None and rt.store.saga_type(by_key) in saga_types:
        return str(by_key)
    return None


def start_saga(ctx: EventContext, saga: Saga | str, data: Any, *, saga_id: str | None = None,
               idempotency_key: str | None = None, version: int | None = None) -> str:
    """`EventContext.start_saga`: start an orchestrated run in the handler's transaction. Returns its id.

    The key defaults to `<choreographed saga id>-<service>-<saga name>`: a redelivered event (or a
    retried handler) finds the run its first handling started. Bad input raises `InvalidEvent`
    (the delivery is dead-lettered, not retried), as do a `saga_id` another run has and a key
    already used with other input."""
    rt = get_runtime()
    name = saga if isinstance(saga, str) else saga.name
    key = idempotency_key or f"{ctx.idempotency_key}-{name}"
    if not 0 < len(key) <= 200:
        raise InvalidEvent(f"idempotency_key must be 1 to 200 characters, got {len(key)}")
    if isinstance(saga, Saga):
        definition = registry.get(saga.name, saga.version)
    else:
        definition = registry.get(saga, version) if version is not None else registry.newest(saga)
    try:
        clean = definition.validate_input(data, registry.child_definition)
    except InvalidInput as e:
        raise InvalidEvent(f"cannot start saga {name!r} from {ctx.event.event_type}: {e}") from None
    clean = seal_input(rt.sealer, definition, clean)  # validated in clear, stored and sent sealed (as start_saga)
    cause = {"choreography": ctx.choreography.name, "saga_id": ctx.saga_id, "event_id": ctx.event.event_id,
             "event_type": ctx.event.event_type, "service": ctx.service}
    try:
        started = rt.loop.start(definition, clean, idempotency_key=key, saga_id=saga_id, tx=ctx.session,
                                cause=cause)
    except (SagaIdTaken, IdempotencyConflict) as e:  # never better on a retry
        raise InvalidEvent(f"cannot start saga {name!r} from {ctx.event.event_type}: {e}") from None
    t = started.transition
    if t is not None and (t.commands or t.children or t.orders or t.dead_letters):
        def publish_first() -> None:
            try:
                rt.loop.publish(t)
            except kombu.exceptions.OperationalError as e:
                log.warning("saga recorded, its first step not sent (%s): the sweeper sends it after its deadline", e,
                            extra={"saga_id": t.after.saga_id})

        rt.store.after_commit(ctx.session, publish_first, check=lambda: rt.store.saga_type(t.after.saga_id) is not None)
    history.add(ctx.unit, ctx.saga_id, "OrchestratedSagaStarted", rt.clock(), step=ctx.event.event_type,
                event_id=ctx.event.event_id, consumer=ctx.service, started_saga_id=started.saga_id,
                started_saga_type=definition.name, started_version=definition.version, idempotency_key=key,
                new=t is not None)
    ctx.started.append(started.saga_id)
    return started.saga_id
