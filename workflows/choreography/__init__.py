"""Choreographed sagas: services react to events on a bus; one queryable history.

    from workflows.choreography import Choreography, EventContext, Envelope, publish

    shop = Choreography("order_parallel", completed={"OrderCompleted"},
                        compensating={"InventoryReservationFailed", "PaymentFailed"},
                        compensated={"OrderCancelled"})
    payment = shop.service("payment")

    @payment.subscribe("OrderCreated")
    def charge(ctx: EventContext, event: Envelope) -> None:
        ...                                               # the effect, in ctx.session
        ctx.publish("PaymentProcessed", {"payment_id": 7})   # committed with it, sent after commit

    saga_id = shop.start("OrderCreated", {"order_id": "o-1", ...})

The modules: `envelope` (the validated event), `declaration` (choreographies, services,
subscriptions), `bus` (exchange, queues, routing), `outbox` (atomic publishing and the relay),
`publishing` (publishing outside a handler, starting a saga), `context` (a handler's context and
`publish`), `consumer` (handling one delivery once), `history` (the saga's history and derived state),
`operations` (redrive, stuck sagas, trace), `install` (Celery wiring, called by `workflows.install`).
Importing it registers nothing: `workflows.install(app)` wires the consumers, the sweeper calls
`sweep_choreographies`, and `workflows.operations.dead_letters.redrive` calls `redrive_event`.
"""
from workflows.choreography.bus import exchange, queue_name, routing_key, use_publisher
from workflows.choreography.context import EventContext, Published, current, publish
from workflows.choreography.declaration import (DEFAULT_HANDLER_POLICY, Choreography, Service, Subscription,
                                                choreographies)
from workflows.choreography.envelope import (SCHEMA_VERSION, Envelope, InvalidEvent, MalformedEvent, make_envelope,
                                             parse_envelope)
from workflows.choreography.history import derive
from workflows.choreography.install import install_consumers
from workflows.choreography.operations import (Delivery, TracedEvent, format_trace, redrive_event, stuck_sagas,
                                               sweep_choreographies, trace)
from workflows.choreography.outbox import relay_pending

__all__ = [
    "DEFAULT_HANDLER_POLICY", "Choreography", "Delivery", "Envelope", "EventContext", "InvalidEvent",
    "MalformedEvent", "Published", "SCHEMA_VERSION", "Service", "Subscription", "TracedEvent",
    "choreographies", "current", "derive", "exchange", "format_trace", "install_consumers", "make_envelope",
    "parse_envelope", "publish", "queue_name", "redrive_event", "relay_pending", "routing_key", "stuck_sagas",
    "sweep_choreographies", "trace", "use_publisher",
]
