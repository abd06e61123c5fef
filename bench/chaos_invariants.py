"""The invariants a chaos run must keep, checked from the database (and the broker's dead-letter queue).

`check(...)` reads every saga of the run, its steps, history, dead letters and the services'
rows, and returns the figures and a list of violations (empty when every invariant held):
- every saga is terminal: COMPLETED, COMPENSATED, or FAILED with a dead letter;
- a COMPLETED saga has each effect exactly once: one reservation RESERVED, one payment CHARGED,
  one shipment CREATED, one confirmation;
- a COMPENSATED saga has every effect that happened undone, once, newest first, and no
  compensation ran for a step that never started (or that failed before its effect);
- no payment was charged twice, and a charge stands only in a COMPLETED saga (or a FAILED one,
  whose stuck compensation waits for an operator);
- each SKU's stock is its starting quantity minus the orders still reserved, and those are
  exactly the COMPLETED sagas' (plus FAILED sagas' whose compensation never reached inventory);
- every dead letter is an exhausted (or permanently failed) task the history shows, it reached
  the broker's dead-letter queue, and every FAILED saga has one.
"""
from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select

from workflows.core.definition import registry
from workflows.store.models import DeadLetterRow, EventRow, SagaRow, StepRow

SERVICE_STEPS = (("reserve_inventory", "reservation", "RESERVED", "RELEASED"),
                 ("process_payment", "payment", "CHARGED", "REFUNDED"),
                 ("create_shipment", "shipment", "CREATED", "CANCELLED"))
TERMINAL = ("COMPLETED", "COMPENSATED", "FAILED")


def load(store: Any, saga_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every saga of the run with its steps, history and dead letters, and the services' rows."""
    from tasks.common import transaction
    from tasks.models import Notification, Payment, Reservation, Shipment

    sagas: dict[str, dict[str, Any]] = {}
    for i in range(0, len(saga_ids), 500):
        chunk = saga_ids[i:i + 500]
        with store.sessions() as s:
            for row in s.scalars(select(SagaRow).where(SagaRow.id.in_(chunk))):
                sagas[row.id] = {"state": row.state, "input": row.input, "steps": {}, "events": [],
                                 "dead_letters": [], "reservation": [], "payment": [], "shipment": [],
                                 "notification": []}
            for st in s.scalars(select(StepRow).where(StepRow.saga_id.in_(chunk))):
                sagas[st.saga_id]["steps"][st.name] = st
            for ev in s.scalars(select(EventRow).where(EventRow.saga_id.in_(chunk)).order_by(EventRow.id)):
                sagas[ev.saga_id]["events"].append(ev)
            for dl in s.scalars(select(DeadLetterRow).where(DeadLetterRow.saga_id.in_(chunk))):
                sagas[dl.saga_id]["dead_letters"].append(dl)
        with transaction() as s:
            for key, model in (("reservation", Reservation), ("payment", Payment), ("shipment", Shipment),
                               ("notification", Notification)):
                for row in s.scalars(select(model).where(model.saga_id.in_(chunk))):
                    sagas[row.saga_id][key].append(row)
    return sagas


def broker_dead_letter_ids(redis_client: Any) -> set[str]:
    """Ids of the dead letters in the broker's `dead_letter` queue (kombu's Redis message format)."""
    ids = set()
    for raw in redis_client.lrange("dead_letter", 0, -1):
        msg = json.loads(raw)
        body = msg.get("body", "")
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        ids.add(json.loads(body).get("dead_letter_id"))
    return ids


def amqp_dead_letter_ids(url: str) -> set[str]:
    """Ids of the dead letters in RabbitMQ's `dead_letter` queue, read without taking them (each
    message is got unacknowledged, and goes back to the queue when the channel closes)."""
    from kombu import Connection, Queue

    ids = set()
    with Connection(url) as conn:
        channel = conn.channel()
        Queue("dead_letter", durable=True, channel=channel).declare()
        while (message := channel.basic_get("dead_letter", no_ack=False)) is not None:
            ids.add(json.loads(message.body).get("dead_letter_id"))
        channel.close()
    return ids


def check(sagas: dict[str, dict[str, Any]], saga_ids: list[str], stock: dict[str, tuple[int, int]],
          broker_dls: set[str] | None) -> tuple[dict[str, Any], list[str]]:
    """(figures, violations). `stock`: sku -> (starting quantity, quantity now)."""
    bad: list[str] = []
    states = Counter(sagas[i]["state"] if i in sagas else "MISSING" for i in saga_ids)
    reserved_qty: Counter[str] = Counter()
    events = Counter(ev.type for i in saga_ids if i in sagas for ev in sagas[i]["events"])
    for saga_id in saga_ids:
        saga = sagas.get(saga_id)
        if saga is None:
            bad.append(f"{saga_id}: no such saga (start lost)")
            continue
        for problem in _check_saga(saga):
            bad.append(f"{saga_id} ({saga['state']}): {problem}")
        for r in saga["reservation"]:
            if r.status == "RESERVED":
                for item in r.items:
                    reserved_qty[item["sku"]] += item["quantity"]
        for dl in saga["dead_letters"]:
            if broker_dls is not None and dl.id not in broker_dls:
                bad.append(f"{saga_id}: dead letter {dl.id} is not in the broker's dead_letter queue")
    completed_qty: Counter[str] = Counter()
    for saga_id in saga_ids:
        if saga_id in sagas and sagas[saga_id]["state"] == "COMPLETED":
            for item in sagas[saga_id]["input"]["items"]:
                completed_qty[item["sku"]] += item["quantity"]
    for sku, (start, now) in stock.items():
        if now != start - reserved_qty[sku]:
            bad.append(f"stock of {sku}: {now} != {start} - {reserved_qty[sku]} reserved")
        if reserved_qty[sku] < completed_qty[sku]:
            bad.append(f"stock of {sku}: completed orders hold {completed_qty[sku]} but only {reserved_qty[sku]} "
                       "is reserved")
    figures = {
        "sagas": len(saga_ids), "states": dict(states),
        "stale_messages_ignored": events["StaleMessageIgnored"], "duplicates_ignored": events["DuplicateIgnored"],
        "follow_ups_republished": events["FollowUpRepublished"], "steps_timed_out": events["StepTimedOut"],
        "duplicates_suppressed": events["StaleMessageIgnored"] + events["DuplicateIgnored"],
        "outcomes_ignored": events["OutcomeIgnored"],
        "dead_letters": sum(len(sagas[i]["dead_letters"]) for i in saga_ids if i in sagas),
        "step_attempts_failed": events["StepAttemptFailed"] + events["CompensationAttemptFailed"],
        "stock": {sku: {"start": a, "now": b, "completed": completed_qty[sku]} for sku, (a, b) in stock.items()},
    }
    return figures, bad


def _check_saga(saga: dict[str, Any]) -> list[str]:
    bad: list[str] = []
    state, steps, events = saga["state"], saga["steps"], saga["events"]
    definition = registry.get("order_fulfillment")
    if state not in TERMINAL:
        return [f"not terminal: {state}"]
    payments = saga["payment"]
    if len(payments) > 1 or len(saga["reservation"]) > 1 or len(saga["shipment"]) > 1:
        bad.append("an effect exists more than once")
    if any(p.status == "CHARGED" for p in payments) and state not in ("COMPLETED", "FAILED"):
        bad.append("a payment is still charged")
    by_step: dict[str, list[str]] = defaultdict(list)
    for ev in events:
        if ev.step:
            by_step[ev.step].append(ev.type)
    if state == "COMPLETED":
        for _step, key, done, _undone in SERVICE_STEPS:
            if [r.status for r in saga[key]] != [done]:
                bad.append(f"{key}: {[r.status for r in saga[key]]}, expected [{done!r}]")
        if len(saga["notification"]) != 1:
            bad.append(f"{len(saga['notification'])} confirmations sent")
        if any(s.status != "SUCCEEDED" for s in steps.values()):
            bad.append("a step did not succeed")
    if state == "COMPENSATED":
        for step, key, _done, undone in SERVICE_STEPS:
            rows = [r.status for r in saga[key]]
            if rows and rows not in ([undone], ["VOIDED"]):  # VOIDED: undone before the late action came
                bad.append(f"{key} {rows} was not undone")
            if rows and steps[step].status != "COMPENSATED":
                bad.append(f"{key} exists but step {step} is {steps[step].status}")
    compensated = [ev.step for ev in events if ev.type == "StepCompensated"]
    if len(compensated) != len(set(compensated)):
        bad.append(f"a step was compensated twice: {compensated}")
    indices = [definition.index_of(s) for s in compensated]
    if indices != sorted(indices, reverse=True):
        bad.append(f"compensations not newest first: {compensated}")
    bad.extend(_check_compensated_only_what_may_have_happened(events))
    for name, st in steps.items():
        if st.status == "PENDING" and by_step[name]:
            bad.append(f"step {name} never started but has history {by_step[name]}")
    bad.extend(_check_dead_letters(saga, definition))
    return bad


def _check_compensated_only_what_may_have_happened(events: list[Any]) -> list[str]:
    """Replay the history: a compensation is dispatched only for a step that succeeded or whose
    outcome is unknown (timed out, or in flight when the saga was cancelled)."""
    bad: list[str] = []
    status: dict[str, str] = {}
    for ev in events:
        if ev.type == "StepDispatched":
            status[ev.step] = "in flight"
        elif ev.type in ("StepSucceeded", "StepFailed", "StepTimedOut"):
            status[ev.step] = ev.type
        elif ev.type == "StepWorkerLost" and ev.detail.get("kind") == "action":  # given up: its effect unknown
            status[ev.step] = "StepTimedOut"
        elif ev.type == "SagaCancelled":
            status.update({k: "StepTimedOut" for k, v in status.items() if v == "in flight"})
        elif ev.type == "CompensationDispatched" and status.get(ev.step) not in (
                "StepSucceeded", "StepTimedOut", "compensating"):
            was = status.get(ev.step, "never started")
            bad.append(f"compensation of {ev.step} dispatched while the step was {was}")
        if ev.type == "CompensationDispatched":
            status[ev.step] = "compensating"
    return bad


def _check_dead_letters(saga: dict[str, Any], definition: Any) -> list[str]:
    bad: list[str] = []
    steps, events = saga["steps"], saga["events"]
    dls = saga["dead_letters"]
    if saga["state"] == "FAILED":
        if not any(d.kind == "compensation" and d.status == "OPEN" for d in dls):
            bad.append("FAILED without an open compensation dead letter")
        if not any(s.status == "COMPENSATION_FAILED" for s in steps.values()):
            bad.append("FAILED but no compensation failed")
    for dl in dls:
        st = steps[dl.step]
        policy = definition.steps[st.index].retry
        lost = [ev for ev in events if ev.type == "StepWorkerLost" and ev.step == dl.step
                and ev.detail.get("kind") == dl.kind]
        if dl.exception.startswith("WorkerLost: "):  # its workers kept dying: given up (issue 20)
            if not lost or (dl.kind == "compensation" and saga["state"] != "FAILED"):
                bad.append(f"worker-lost dead letter for {dl.step} ({dl.kind}) without its StepWorkerLost")
            continue
        if dl.kind == "action":
            exhausted = [ev for ev in events if ev.type == "StepFailed" and ev.step == dl.step
                         and ev.detail.get("reason") == "retries exhausted"]
            if st.status != "FAILED" or not exhausted or dl.attempts != policy.max_attempts:
                bad.append(f"dead letter for {dl.step} (attempts {dl.attempts}) is not an exhausted action")
        elif dl.kind == "compensation":
            if saga["state"] != "FAILED" or st.status != "COMPENSATION_FAILED" or not any(
                    ev.type == "CompensationFailed" and ev.step == dl.step for ev in events):
                bad.append(f"dead letter for the compensation of {dl.step} without a failed compensation")
    exhausted_steps = {ev.step for ev in events if ev.type == "StepFailed"
                       and ev.detail.get("reason") == "retries exhausted"}
    if exhausted_steps - {d.step for d in dls if d.kind == "action"}:
        bad.append(f"retries of {sorted(exhausted_steps)} exhausted without a dead letter")
    return bad
