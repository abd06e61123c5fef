"""A known card number through the example shop on RabbitMQ, found in clear in nothing RabbitMQ carried.

tests/servers/test_sealed_fields.py captures the Redis broker (`MONITOR`); this module captures
RabbitMQ (issue #31). RabbitMQ's firehose (`rabbitmqctl trace_on`) copies every message published
on the test vhost, on any exchange, to `amq.rabbitmq.trace` under `publish.<exchange>`; a capture
queue bound there with `publish.#` keeps them all. Given workers on RabbitMQ (one consuming the
saga's step queues, one the event queues of the two choreographies' services), when one known card
pays for an orchestrated `order_fulfillment`, the hybrid checkout (`order_checkout`, whose
fulfilment service starts `order_paid_fulfillment`) and the choreography `order_sequential`, and
all of them complete, then the card is in no message the capture kept (bodies decoded, headers
included) and in no row of the database (`pg_dump --data-only`).

A failure names each place the card was found: the message (exchange, routing key, Celery task)
and the JSON path in it, the table and column.
"""
from __future__ import annotations

import json
import random
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from kombu import Connection

from tasks.choreography.checkout import checkout
from tasks.choreography.sequential import sequential
from tests.support.choreo import broker_url, client_app, order, rabbitmq_workers, settle
from tests.support.databases import libpq_url
from tests.support.interfaces import wait_until
from workflows import start_saga, wait_for
from workflows.choreography import choreographies, use_publisher
from workflows.runtime.container import Runtime, activate
from workflows.runtime.settings import get_settings

STEP_QUEUES = "saga,inventory,payment,shipping,notification"
FLOWS = ("order_checkout", "order_sequential")
EVENT_SERVICES = tuple(sorted(s for s, routes in choreographies.routes().items()
                              if any(c in FLOWS for c, _ in routes)))
"""The services of the two choreographies (saga_waits included: the checkout's PaymentSettled
answers the orchestrated half's wait)."""

CAPTURE = f"sealed-capture-{uuid.uuid4().hex[:8]}"
"""The capture queue's name (exclusive to the connection that declared it)."""

Captured = list[tuple[str, Any]]
"""(where: exchange, routing key and task of one published message; the message decoded)."""


def a_card() -> str:
    """A card number no other test uses (16 digits, not a declined one)."""
    return "49" + "".join(random.choice("0123456789") for _ in range(14))


def vhost_of(url: str) -> str:
    """The vhost an AMQP URL names (`amqp://h:5672//` and `amqp://h:5672` are `/`)."""
    return unquote(urlsplit(url).path[1:]) or "/"


@pytest.fixture(scope="module")
def amqp_app(app: Any) -> Any:
    return client_app("amqp")


@pytest.fixture(scope="module")
def workers(amqp_app: Any) -> Iterator[None]:
    """One worker on the step queues, one on the event queues; both on RabbitMQ and the session's database."""
    with rabbitmq_workers(amqp_app, "sealed", EVENT_SERVICES, STEP_QUEUES):
        yield


@pytest.fixture
def on_rabbitmq(amqp_app: Any, workers: None) -> Iterator[Runtime]:
    """This process starts runs and publishes events on RabbitMQ (the servers conftest gives it Redis):
    its own runtime over the session's database, with the deployment's settings and field keys."""
    rt = Runtime(app=amqp_app, settings=get_settings().model_copy(update={"broker_url": broker_url("amqp")}))
    with activate(rt), use_publisher(amqp_app):
        yield rt


@pytest.fixture
def firehose(workers: None) -> Iterator[Connection]:
    """A queue receiving a copy of every message published on the test vhost from now on.

    Yields the connection that holds it (the queue is exclusive to it); `drain(conn)` reads it."""
    url = broker_url("amqp")
    vhost = vhost_of(url)
    with Connection(url) as conn:
        ch = conn.default_channel
        ch.queue_declare(CAPTURE, exclusive=True, auto_delete=True)
        ch.queue_bind(CAPTURE, "amq.rabbitmq.trace", "publish.#")
        subprocess.run(["rabbitmqctl", "-q", "trace_on", "-p", vhost], check=True, capture_output=True)
        try:
            yield conn
        finally:
            subprocess.run(["rabbitmqctl", "-q", "trace_off", "-p", vhost], check=True, capture_output=True)


def test_a_known_card_is_in_no_message_rabbitmq_carried_nor_in_the_database(  # type: ignore[no-untyped-def]
        database, order_factory, on_rabbitmq: Runtime, firehose: Connection) -> None:
    card = a_card()
    paid = {"payment": {"card": card}}

    # Given the card pays for an orchestrated order, a hybrid checkout and a choreographed order
    orchestrated = start_saga("order_fulfillment", order_factory(**paid))
    placed = order(**paid)
    checkout_flow = checkout.start("OrderPlaced", placed, idempotency_key=f"placed-{placed['order_id']}")
    created = order(**paid)
    sequential_flow = sequential.start("OrderCreated", created, idempotency_key=f"created-{created['order_id']}")

    # When all of them complete
    assert wait_for(orchestrated, timeout=60).state == "COMPLETED"
    wait_until(lambda: on_rabbitmq.store.saga_type(placed["order_id"]), timeout=60, what="the checkout's saga")
    assert settle(placed["order_id"], timeout=60).state == "COMPLETED"
    assert settle(checkout_flow, timeout=60).state == "COMPLETED"
    assert settle(sequential_flow, timeout=60).state == "COMPLETED"
    [charge] = [s for s in wait_for(orchestrated).steps if s.name == "process_payment"]
    assert charge.result is not None and charge.result["card_last4"] == card[-4:]  # the step charged the card

    # Then the capture holds the runs' messages, the orchestrated one's input sealed ...
    captured = drain(firehose)
    seen = "\n".join(json.dumps(m) for _, m in captured)
    for saga_id in (orchestrated, checkout_flow, placed["order_id"], sequential_flow):
        assert saga_id in seen, f"no message of {saga_id} in the RabbitMQ capture"
    assert "$sealed" in seen
    dump = subprocess.run(["pg_dump", "--data-only", libpq_url(database)], capture_output=True, text=True,
                          check=True).stdout
    assert orchestrated in dump and sequential_flow in dump and "$sealed" in dump  # the dump is of these runs

    # ... and the card is in clear nowhere
    runs = {orchestrated: "order_fulfillment", checkout_flow: "order_checkout",
            placed["order_id"]: "order_paid_fulfillment", sequential_flow: "order_sequential"}
    found = {"rabbitmq capture": sorted({f"{where} {of_runs(json.dumps(m), runs)}: {path}"
                                         for where, m in captured for path in paths_to(card, m)}),
             "pg_dump": sorted(columns_with(card, dump, runs))}
    assert found == {"rabbitmq capture": [], "pg_dump": []}, report(card, found)


def report(card: str, found: dict[str, list[str]]) -> str:
    """Each place the card was found in clear, one a line (pytest would shorten the dict's diff)."""
    lines = [f"card {card} found in clear:"]
    lines += [f"  {place}: {where}" for place, wheres in found.items() for where in wheres]
    return "\n".join(lines)


def drain(conn: Connection, quiet: float = 1.0) -> Captured:
    """Every message the capture queue holds, read until none came for `quiet` seconds (the last
    after-commit publishes of a run may follow its final state by a moment)."""
    ch = conn.default_channel
    got: Captured = []
    idle_since = time.monotonic()
    while time.monotonic() - idle_since < quiet:
        m = ch.basic_get(CAPTURE, no_ack=True)
        if m is None:
            time.sleep(0.05)
            continue
        idle_since = time.monotonic()
        got.append(_decoded(m))
    assert got, "the RabbitMQ capture is empty: is the firehose on?"
    return got


def _decoded(m: Any) -> tuple[str, Any]:
    """One firehose copy as (where, message): its headers (the publish's exchange, routing keys and
    properties, the original headers among them) and its body, JSON decoded when it is JSON (a
    Celery protocol 2 task body is `[args, kwargs, embed]`)."""
    headers = _plain(m.headers or {})
    props = headers.get("properties") or {}
    task = (props.get("headers") or {}).get("task") if isinstance(props, dict) else None
    text = m.body.decode(errors="replace") if isinstance(m.body, bytes) else str(m.body)
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = text
    exchange = headers.get("exchange_name") or "(default)"
    where = f"exchange {exchange} key {','.join(map(str, headers.get('routing_keys') or []))}"
    return (f"{where} task {task}" if task else where), {"headers": headers, "body": body}


def _plain(value: Any) -> Any:
    """AMQP table values as JSON ones (bytes as text)."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def paths_to(needle: str, value: Any, path: str = "$") -> Iterator[str]:
    """The JSON paths in `value` whose string holds `needle` (a string that is JSON is searched inside too)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_to(needle, v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_to(needle, v, f"{path}[{i}]")
    elif isinstance(value, str) and needle in value:
        try:
            inner = json.loads(value)
        except ValueError:
            inner = None
        found = list(paths_to(needle, inner, path)) if isinstance(inner, (dict, list)) else []
        yield from found or [path]


def of_runs(text: str, runs: dict[str, str]) -> str:
    """Which of the test's runs `text` names (by id), as `[saga type, ...]`."""
    return "[" + ", ".join(sorted({name for saga_id, name in runs.items() if saga_id in text})) + "]"


def columns_with(needle: str, dump: str, runs: dict[str, str]) -> set[str]:
    """Where a `pg_dump --data-only` holds `needle`: `table.column [run, kind]` (the test's run the
    row belongs to, by its `saga_id` or a run's own `id`; its event type when it has one), or `?`
    and the line outside a table's rows."""
    found: set[str] = set()
    table, columns = None, []
    for line in dump.splitlines():
        if m := re.match(r"COPY (\S+) \((.*)\) FROM stdin;$", line):
            table, columns = m.group(1), [c.strip().strip('"') for c in m.group(2).split(",")]
        elif line == "\\.":
            table = None
        elif needle in line:
            if table is None:
                found.add(f"? {line[:80]}")
                continue
            row = dict(zip(columns, line.split("\t")))
            run = runs.get(row.get("saga_id") or row.get("id") or "", "another run")
            kind = row.get("event_type") or row.get("type") or ""
            found.update(f"{table}.{c} [{run}{', ' + kind if kind else ''}]" for c, v in row.items() if needle in v)
    return found

