"""Sagas used only by the tests, loaded into test workers with SAGA_EXTRA_MODULES.

One generic step function whose behaviour per step comes from the saga input, so each test
builds the failure it needs: {"behaviour": {"b": {"fail": "permanent"}}}, {"fail_times": 2},
{"sleep": 5}, {"switch": true} (fails while the Redis key switch:<saga>:<step> exists),
{"exit": true} (ends its pool process with os._exit(1), as a segfault or the OOM killer would).
Every call appends "<kind>:<step>:<attempt>" to the Redis list effects:<saga id>.
"""
from __future__ import annotations

import os
import time
from typing import Any

import redis

from workflows import ForEach, Parallel, PermanentError, RetryPolicy, Saga, Step, StepContext, register_saga, step_task
from workflows.core.definition import Child

_redis: redis.Redis | None = None


def r() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    return _redis


class Transient(Exception):
    pass


def behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    key = "behaviour" if ctx.kind == "action" else "compensation_behaviour"
    b = data.get(key, {}).get(ctx.step, {})
    r().rpush(f"effects:{ctx.saga_id}", f"{ctx.kind}:{ctx.step}:{ctx.attempt}")
    if b.get("exit"):
        os._exit(1)
    if b.get("sleep"):
        time.sleep(b["sleep"])
    if b.get("fail") == "permanent":
        raise PermanentError(f"{ctx.step} refuses")
    if ctx.attempt <= b.get("fail_times", 0):
        raise Transient(f"{ctx.step} flaked on attempt {ctx.attempt}")
    if b.get("switch") and r().exists(f"switch:{ctx.saga_id}:{ctx.step}"):
        raise Transient(f"{ctx.step} is switched off")
    return {"step": ctx.step, "saw": sorted(ctx.results), "own": ctx.result, "item": ctx.item,
            "key": ctx.idempotency_key}


action = step_task("tests.action", queue="tests")(behave)
compensate = step_task("tests.compensate", queue="tests")(behave)
orphan = step_task("tests.orphan", queue="unconsumed")(behave)

FAST = RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0, max_interval=1.0)
FAST_COMP = RetryPolicy(max_attempts=3, initial_interval=0.2, backoff=2.0, max_interval=1.0)

three_steps = register_saga(Saga("tests.three", steps=[
    Step("a", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    Step("b", action=action, compensation=None, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    Step("c", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=2),
]))

with_orphan = register_saga(Saga("tests.orphan", steps=[
    Step("a", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    Step("lost", action=orphan, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=1),
]))

with_deadline = register_saga(Saga("tests.deadline", deadline=1.0, steps=[
    Step("a", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    Step("slow", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
]))

parallel = register_saga(Saga("tests.parallel", steps=[
    Step("a", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    Parallel("prepare", [
        Step("reserve", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
        Step("charge", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    ]),
    Step("ship", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
]))

fan_out = register_saga(Saga("tests.fan_out", steps=[
    Step("pick", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
    ForEach(Step("parcel", action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP,
                 timeout=10), items=lambda data: data["parcels"], max_items=20),
    Step("notify", action=action, compensation=None, retry=FAST, compensation_retry=FAST_COMP, timeout=10),
]))


# The console's browser test (tests/servers/test_console_browser.py): the example shop's order with compensations
# that give up after 3 quick tries, so a stuck release is dead-lettered in seconds, not minutes.
def _console_order() -> Saga:
    from tasks.inventory import release_reservation, reserve_items
    from tasks.notification import send_confirmation
    from tasks.payment import charge_payment, refund_payment
    from tasks.sagas import Order
    from tasks.shipping import cancel_shipment, create_shipment

    return Saga("tests.console_order", input_model=Order, steps=[
        Step("reserve_inventory", action=reserve_items, compensation=release_reservation, retry=FAST,
             compensation_retry=FAST_COMP, timeout=10),
        Step("process_payment", action=charge_payment, compensation=refund_payment, retry=FAST,
             compensation_retry=FAST_COMP, timeout=10),
        Step("create_shipment", action=create_shipment, compensation=cancel_shipment, retry=FAST,
             compensation_retry=FAST_COMP, timeout=10),
        Step("send_confirmation", action=send_confirmation, compensation=None, retry=FAST, timeout=10),
    ])


console_order = register_saga(_console_order())


def _step(name: str, timeout: float = 10) -> Step:
    return Step(name, action=action, compensation=compensate, retry=FAST, compensation_retry=FAST_COMP,
                timeout=timeout)


kid = Saga("tests.kid", steps=[_step("k1"), _step("k2")])
"""The child of `tests.with_child`; its behaviour comes from the parent's input (`kid_behaviour`)."""

with_child = register_saga(Saga("tests.with_child", steps=[
    _step("a"),
    Child("kid", saga=kid, input=lambda data, results: {"behaviour": data.get("kid_behaviour", {}),
                                                        "from_a": results["a"]["step"]}),
    _step("c"),
]))

ship_first = register_saga(Saga("tests.ship_first", steps=[
    Child("ship", saga="order_shipping"),  # the example's shipping saga: its input must be an Order
    _step("after"),
]))
"""A parent whose first stage is a child with an input model: bad input is refused at its door."""


def _charge_refund() -> Saga:
    """The shop's charge and refund, the charge declaring that its refund also runs when it fails for
    good (the gateway may error after taking the money)."""
    from tasks.payment import charge_payment, refund_payment

    return Saga("tests.charge_refund", steps=[
        Step("process_payment", action=charge_payment, compensation=refund_payment, compensate_failure=True,
             timeout=30),
    ])


charge_refund = register_saga(_charge_refund())
