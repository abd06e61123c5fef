"""The choreographed half of `make demo`: both seed examples, a success and failures each.

    from tasks.choreography.demo import run_choreography_demo
    for outcome in run_choreography_demo(console):     # a worker consuming the events.* queues must run
        title, expected, state = outcome                 # and outcome.saga_id

Each saga is printed as its event tree (who published what, caused by which event, and where
each delivery stands) and the effects left in the services' tables.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

SCENARIOS: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (choreography, title, expected state, order overrides, fault)
    ("order_sequential", "choreography, sequential: order fulfilled", "COMPLETED", {}, ""),
    ("order_sequential", "choreography, sequential: card declined -> ReleaseInventory + OrderFailed",
     "COMPENSATED", {"payment": {"card": "4000000000000002"}}, ""),
    ("order_sequential", "choreography, sequential: no carrier -> RefundPayment + ReleaseInventory",
     "COMPENSATED", {"shipping_address": {"name": "Nemo", "street": "1 Deep Rd", "city": "Atlantis",
                                          "country": "XX"}}, ""),
    ("order_parallel", "choreography, parallel: payment and inventory at once, order completed", "COMPLETED", {}, ""),
    ("order_parallel", "choreography, parallel: out of stock -> PaymentRefunded -> OrderCancelled", "COMPENSATED",
     {"items": [{"sku": "DEMO-SOLD-OUT", "quantity": 1, "price": "5.00"}]}, ""),
    ("order_parallel", "choreography, parallel: the failure overtakes a retried charge: never charged",
     "COMPENSATED", {"items": [{"sku": "DEMO-SOLD-OUT", "quantity": 1, "price": "5.00"}]}, "payment-transient-1"),
]


class DemoOutcome(tuple):
    """(title, expected state, final state), as the demo's summary unpacks it, plus `.saga_id`."""

    saga_id: str

    def __new__(cls, title: str, expected: str, state: str, saga_id: str) -> DemoOutcome:
        self = super().__new__(cls, (title, expected, state))
        self.saga_id = saga_id
        return self


def run_choreography_demo(console: Any = None, *, timeout: float = 60.0) -> list[DemoOutcome]:
    """Run every scenario one after the other, print each, return their outcomes.

    Needs the runtime installed (`import worker`), a migrated database and a worker consuming
    the event queues (`celery -A worker worker`). Never raises for a saga that ends otherwise
    than expected: the outcome says so (a saga still running after `timeout` reports its state)."""
    from tasks.common import arm_fault, clear_faults
    from tasks.inventory import restock

    from workflows.operations.client import get_saga
    from workflows.choreography.declaration import choreographies

    def out(line: str) -> None:
        if console is None:
            print(line)
        else:  # a rich Console: print the text as it is (payloads hold brackets)
            console.print(line, markup=False, highlight=False)

    clear_faults()
    restock({"DEMO-SOLD-OUT": 0})
    results = []
    for n, (name, title, expected, overrides, fault) in enumerate(SCENARIOS, start=1):
        sku = f"DEMO-CHOREO-{uuid.uuid4().hex[:6]}"
        restock({sku: 5})
        order = {"order_id": f"order-c{n}-{uuid.uuid4().hex[:6]}", "customer_id": "cust-42",
                 "email": "ada@example.com", "items": [{"sku": sku, "quantity": 2, "price": "19.90"}],
                 "payment": {"card": "4242424242424242"},
                 "shipping_address": {"name": "Ada Lovelace", "street": "12 St James's Sq", "city": "London",
                                      "country": "GB"}, **overrides}
        if fault == "payment-transient-1":
            arm_fault("payment", times=1, permanent=False, message="gateway timeout (injected)")
        saga_id = choreographies.get(name).start("OrderCreated", order, idempotency_key=order["order_id"])
        deadline = time.monotonic() + timeout
        view = get_saga(saga_id)
        while not view.terminal and time.monotonic() < deadline:
            time.sleep(0.05)
            view = get_saga(saga_id)
        clear_faults()
        results.append(DemoOutcome(title, expected, view.state, saga_id))
        _print(out, n, title, view, saga_id)
    return results


def _print(out: Any, n: int, title: str, view: Any, saga_id: str) -> None:
    from tasks.common import effects_of

    from workflows.choreography.operations import format_trace, trace

    out(f"C{n}. {title} — saga {saga_id[:8]} ({view.saga_type}) {view.state}"
        + (f"  [{view.failure_reason}]" if view.failure_reason else ""))
    for line in format_trace(trace(saga_id)):
        out(f"   {line}")
    out(f"   effects: {effects_of(saga_id)}")
    out("")


