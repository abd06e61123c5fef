"""The `saga-commands` consumer (`sagas kafka-commands`): start, signal and cancel sagas from Kafka.

    {"command": "start", "saga": "order_fulfillment", "input": {...}, "idempotencyKey": "order-123"}
    {"command": "start", "saga": "order_fulfillment", "sagaId": "order-123", "input": {...}}
    {"command": "signal", "sagaId": "order-123", "signal": "approval", "payload": {...}}
    {"command": "cancel", "sagaId": "order-123", "reason": "customer asked"}
    {"sagaId": "123", "command": "StartOrder"}          # an alias (SAGA_KAFKA_COMMAND_ALIASES)

Keys may be camelCase or snake_case. Each command goes through the same operations as the API and
the CLI (`start_saga`, `signal`, `cancel`), so the same checks apply. A message is committed (its
offset) only once handled: a consumer killed in between gets it again, and the command is
idempotent (a start by its idempotency key or saga id; a signal by its key, by default the
message's own `topic:partition:offset`; a cancel of a run already compensating changes nothing).
A message that is not a command (not JSON, an unknown command or saga, bad input, no such run) is
kept as a dead letter (kind `command`, the raw message and the reason) and the consumer goes on:
never dropped, never stopping it.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workflows._extras import require
from workflows.core.errors import InvalidOperation, SagaError, SagaNotFound
from workflows.core.state import DeadLetter, ErrorInfo, MessageInfo, RunStatus
from workflows.runtime.container import Runtime

log = logging.getLogger("workflows.kafka")

COMMANDS = ("start", "signal", "cancel")
TASK = "kafka.saga-commands"
"""The dead letters' task name: where a command that could not be handled came from."""


class BadCommand(ValueError):
    """The message is not a command this consumer can handle (the reason in the message)."""


@dataclass(frozen=True)
class Handled:
    what: str
    """'started', 'signalled', 'cancelled' or 'dead-lettered'."""
    saga_id: str | None
    detail: str = ""


def _field(msg: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in msg:
            return msg[n]
    return None


def parse(raw: bytes | None, aliases: dict[str, str]) -> dict[str, Any]:
    """The command in `raw`, its keys in snake_case; `BadCommand` says what is wrong."""
    try:
        msg = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadCommand(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise BadCommand(f"a command is a JSON object, not {type(msg).__name__}")
    name = msg.get("command")
    saga = _field(msg, "saga", "saga_type", "sagaType")
    if isinstance(name, str) and name in aliases:
        name, saga = "start", aliases[name]
    if name not in COMMANDS:
        known = ", ".join([*COMMANDS, *aliases])
        raise BadCommand(f"unknown command {name!r} (known: {known})")
    cmd = {"command": name, "saga": saga, "saga_id": _field(msg, "saga_id", "sagaId"),
           "idempotency_key": _field(msg, "idempotency_key", "idempotencyKey"),
           "input": _field(msg, "input", "data"), "signal": _field(msg, "signal", "name"),
           "payload": msg.get("payload"), "reason": msg.get("reason"), "who": msg.get("who")}
    if name == "start" and not isinstance(saga, str):
        raise BadCommand("a start names its saga type: \"saga\"")
    if name in ("signal", "cancel") and not isinstance(cmd["saga_id"], str):
        raise BadCommand(f"a {name} names its run: \"sagaId\"")
    if name == "signal" and not isinstance(cmd["signal"], str):
        raise BadCommand("a signal names its signal: \"signal\"")
    return cmd


def handle(cmd: dict[str, Any], *, origin: str) -> Handled:
    """Apply one parsed command (`origin`: `topic:partition:offset`, a signal's default key)."""
    from workflows.operations.actions import cancel
    from workflows.operations.client import start_saga
    from workflows.operations.signals import signal

    who = cmd["who"] if isinstance(cmd["who"], str) else "kafka"
    if cmd["command"] == "start":
        saga_id = start_saga(cmd["saga"], cmd["input"] if cmd["input"] is not None else {},
                             idempotency_key=cmd["idempotency_key"], saga_id=cmd["saga_id"])
        return Handled("started", saga_id)
    if cmd["command"] == "signal":
        done = signal(cmd["saga_id"], cmd["signal"], cmd["payload"], who=who,
                      idempotency_key=cmd["idempotency_key"] or f"kafka:{origin}")
        return Handled("signalled", cmd["saga_id"], "duplicate" if done.duplicate else "")
    try:
        cancel(cmd["saga_id"], reason=cmd["reason"] or "cancelled by a Kafka command", who=who)
    except InvalidOperation:
        from workflows.runtime.container import get_runtime
        if get_runtime().store.load(cmd["saga_id"]).status in (RunStatus.COMPENSATING, RunStatus.COMPENSATED):
            return Handled("cancelled", cmd["saga_id"], "already cancelled")  # a redelivered cancel
        raise
    return Handled("cancelled", cmd["saga_id"])


def process(rt: Runtime, raw: bytes | None, *, topic: str, partition: int, offset: int,
            aliases: dict[str, str]) -> Handled:
    """One message: parsed and handled, or kept as a dead letter with the reason. Never raises for
    the message's own fault; the database or broker down raises (the message is not committed)."""
    origin = f"{topic}:{partition}:{offset}"
    try:
        return handle(parse(raw, aliases), origin=origin)
    except (BadCommand, SagaError, SagaNotFound) as e:
        error = ErrorInfo(type(e).__name__, str(e))
    text = (raw or b"").decode("utf-8", "replace")
    saga_id = _named_run(text)
    message = MessageInfo(TASK, topic, [text], {}, {"topic": topic, "partition": partition, "offset": offset})
    exists = saga_id is not None and rt.store.saga_type(saga_id) is not None
    rt.loop.dead_letter(DeadLetter(rt.ids(), "command", None, TASK, 1, error, message),
                        saga_id=saga_id if exists else None)
    log.warning("saga command kept as a dead letter (%s): %s", origin, error)
    return Handled("dead-lettered", saga_id, str(error))


def _named_run(text: str) -> str | None:
    """The run a message names, if it is a JSON object naming one (its dead letter is filed there)."""
    try:
        msg = json.loads(text)
    except ValueError:
        return None
    found = _field(msg, "saga_id", "sagaId") if isinstance(msg, dict) else None
    return found if isinstance(found, str) else None


def aliases_of(setting: str) -> dict[str, str]:
    """`Name=saga_type,...` as a dict (SAGA_KAFKA_COMMAND_ALIASES)."""
    pairs = [p.split("=", 1) for p in setting.split(",") if p.strip()]
    bad = [p for p in pairs if len(p) != 2 or not p[0].strip() or not p[1].strip()]
    if bad:
        raise ValueError(f"SAGA_KAFKA_COMMAND_ALIASES: {setting!r} is not Name=saga_type,... pairs")
    return {k.strip(): v.strip() for k, v in pairs}


def consume(rt: Runtime, *, stop: Callable[[], bool] = lambda: False, poll: float = 1.0,
            on_handled: Callable[[Handled], None] | None = None) -> None:
    """Consume the commands topic until `stop()`: each message handled, then its offset committed."""
    require("kafka", "sagas kafka-commands", "confluent_kafka")
    from confluent_kafka import Consumer

    s = rt.settings
    if not s.kafka_bootstrap_servers:
        raise SagaError("SAGA_KAFKA_BOOTSTRAP_SERVERS is not set: there is no Kafka to consume from")
    aliases = aliases_of(s.kafka_command_aliases)
    # a session of 10 s (librdkafka's default is 45): a consumer that died is replaced sooner, and a
    # broker that holds a new group's first join for a session (Tansu) answers in seconds
    consumer = Consumer({"bootstrap.servers": s.kafka_bootstrap_servers, "group.id": s.kafka_commands_group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000})
    consumer.subscribe([s.kafka_commands_topic])
    try:
        while not stop():
            m = consumer.poll(poll)
            if m is None:
                continue
            if m.error() is not None:
                log.warning("saga-commands: %s", m.error())
                continue
            done = process(rt, m.value(), topic=m.topic() or s.kafka_commands_topic, partition=m.partition() or 0,
                           offset=m.offset() or 0, aliases=aliases)
            consumer.commit(message=m, asynchronous=False)
            if on_handled is not None:
                on_handled(done)
    finally:
        consumer.close()
