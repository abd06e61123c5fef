"""Kafka in and out, against a real Kafka-protocol broker (Tansu, `tests.support.kafka`).

Out: every transition is a record on the events topic, after its commit, keyed by its saga id,
in order per saga; a consumer group reads them all, a consumer restarted in the middle misses
nothing; the broker stopped for a while loses nothing once it is back (the sweeper sends what
waited). In: commands sent with `kcat` start, signal and cancel sagas; a malformed or unknown one
becomes a dead letter. The runs are driven in process (PostgreSQL, the recording dispatcher and
its worker, the test clock); the broker is real. N sagas: SAGA_KAFKA_TEST_N (default 50).
"""
from __future__ import annotations

import itertools
from datetime import timedelta
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from workflows import start_saga
from workflows.interfaces import cli
from workflows.interfaces.kafka_commands import Handled, consume
from workflows.operations.sweeper import sweep
from workflows.projections import Projection, Projections
from workflows.projections.kafka import KafkaSink
from workflows.projections.setup import EVENTS
from workflows.projections.views import saga_event
from workflows.core.state import IdSource
from workflows.runtime.container import Runtime
from workflows.testing import Clock, Worker
from tests.support.kafka import Tansu, consume_all, events_by_saga, kcat_produce
from tests.support.projection_sagas import APPROVAL, LINE

N = int(os.environ.get("SAGA_KAFKA_TEST_N", "50"))


@pytest.fixture(scope="module")
def tansu() -> Iterator[Tansu]:
    broker = Tansu().start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def prefix() -> str:
    """This test's own: its run ids and its topics (on the shared database and broker)."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def saga_database_url(database: str) -> str:
    return database


@pytest.fixture
def saga_ids(prefix: str) -> IdSource:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):020x}"


@pytest.fixture
def saga_settings(tansu: Tansu, prefix: str) -> dict[str, Any]:
    """The saga-events projection and the commands consumer configured by their settings."""
    return {"kafka_bootstrap_servers": tansu.bootstrap, "kafka_events_topic": f"saga-events-{prefix}",
            "kafka_commands_topic": f"saga-commands-{prefix}", "kafka_commands_group": f"sagas-{prefix}",
            "kafka_command_aliases": "StartOrder=proj.line"}


def drain(rt: Runtime) -> None:
    Worker(rt, rt.dispatcher).drain(max_steps=10 * N + 100)  # type: ignore[arg-type]


def test_n_sagas_put_exactly_their_transitions_on_saga_events_in_order(rt: Runtime, clock: Clock, tansu: Tansu) -> None:
    # Given the saga-events projection configured by its settings, When N sagas run to completion
    ids = [start_saga(LINE, {}) for _ in range(N)]
    drain(rt)
    final = {i: rt.store.load(i) for i in ids}
    assert {r.status.value for r in final.values()} == {"COMPLETED"}
    topic = rt.settings.kafka_events_topic
    per_saga = 4  # started, then a, b, c succeeded (the last one completes the run)

    # Then a consumer group reads exactly their transitions: per saga, the run versions in order, each
    # once, from the start to the COMPLETED one, keyed by the saga id
    events = consume_all(tansu.bootstrap, topic, f"readers-{uuid.uuid4().hex}", until=N * per_saga)
    assert len(events) == N * per_saga
    for saga_id, mine in events_by_saga(events):
        versions = [e["run_version"] for e in mine]
        assert versions == list(range(final[saga_id].version - per_saga + 1, final[saga_id].version + 1))
        assert mine[0]["event"] == "SagaStarted" and mine[-1]["state"] == "COMPLETED"
        assert {e["key"] for e in mine} == {saga_id} and {e["saga_type"] for e in mine} == {"proj.line"}
        assert [e["event_id"] for e in mine] == [f"{saga_id}:{v}" for v in versions]
    assert {e["saga_id"] for e in events} == set(ids)
    assert rt.store.unsent_projections(clock() + timedelta(days=1)) == []  # type: ignore[attr-defined]

    # And a consumer of another group stopped in the middle, then restarted, misses nothing
    group = f"restarted-{uuid.uuid4().hex}"
    first = consume_all(tansu.bootstrap, topic, group, until=N * per_saga, stop_after=N * per_saga // 2)
    rest = consume_all(tansu.bootstrap, topic, group, until=N * per_saga - len(first))
    assert len(first) == N * per_saga // 2
    assert {e["event_id"] for e in first} | {e["event_id"] for e in rest} == {e["event_id"] for e in events}


def test_commands_sent_with_kcat_start_signal_and_cancel_and_a_bad_one_is_a_dead_letter(
        rt: Runtime, clock: Clock, tansu: Tansu, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run waiting for its approval and one whose first step is in flight
    key = f"order-{uuid.uuid4().hex[:8]}"
    seed_id = f"order-{uuid.uuid4().hex[:8]}"
    waiting = start_saga(APPROVAL, {})
    drain(rt)
    assert rt.store.get(waiting).state == "WAITING"
    running = start_saga(LINE, {})

    # When these commands are sent with kcat, and the consumer handles them
    commands = [json.dumps({"command": "start", "saga": "proj.line", "idempotencyKey": key, "input": {}}),
                json.dumps({"command": "start", "saga": "proj.line", "idempotencyKey": key, "input": {}}),
                json.dumps({"command": "signal", "sagaId": waiting, "signal": "approval", "payload": {}}),
                json.dumps({"command": "cancel", "sagaId": running, "reason": "customer asked"}),
                "this is not json",
                json.dumps({"command": "explode", "sagaId": running}),
                json.dumps({"sagaId": seed_id, "command": "StartOrder"})]
    # keyed alike (`-K '|'`): one partition, so they are handled in the order sent
    kcat_produce(tansu.bootstrap, rt.settings.kafka_commands_topic, [f"shop|{c}" for c in commands],
                 key_delimiter="|")
    handled: list[Handled] = []
    consume(rt, stop=lambda: len(handled) >= len(commands) - 1, on_handled=handled.append)
    # the last one by `sagas kafka-commands`, in the same group: it resumes where the first stopped
    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    out = CliRunner().invoke(cli.main, ["kafka-commands", "--max-messages", "1"])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == f"started {seed_id}"
    handled.append(Handled("started", seed_id))
    drain(rt)

    # Then the start ran once under its key, the signal and the cancel took, the seed's command
    # started its saga under its own id, and the two bad messages are dead letters with the reason
    started = rt.store.saga_id_for_key(key)
    assert started is not None and rt.store.get(started).state == "COMPLETED"
    assert [h.saga_id for h in handled[:2]] == [started, started]
    assert rt.store.get(waiting).state == "COMPLETED"
    assert rt.store.get(running).state in ("COMPENSATED", "COMPENSATING")
    assert rt.store.get(seed_id).state == "COMPLETED"
    assert [h.what for h in handled] == ["started", "started", "signalled", "cancelled", "dead-lettered",
                                         "dead-lettered", "started"]
    letters = {dl.args[0]: dl for dl in rt.store.dead_letters(status="OPEN") if dl.kind == "command"}
    assert "not JSON" in letters["this is not json"].exception
    assert "unknown command 'explode'" in letters[commands[5]].exception
    assert letters[commands[5]].saga_id == running


def test_the_broker_stopped_for_a_while_loses_nothing_once_it_is_back(rt: Runtime, clock: Clock, tansu: Tansu) -> None:
    # Given the broker stopped
    sink = KafkaSink(tansu.bootstrap, rt.settings.kafka_events_topic, timeout=2.0, cooldown=0.0)
    rt._projections = Projections([Projection(EVENTS, saga_event, sink)])
    tansu.stop()
    try:
        # When sagas run meanwhile: they are not held up, their records wait in the database
        ids = [start_saga(LINE, {}) for _ in range(5)]
        drain(rt)
        assert {rt.store.get(i).state for i in ids} == {"COMPLETED"}
        waiting = [r for r in rt.store.unsent_projections(clock() + timedelta(days=1))
                   if r.saga_id in ids]
        assert len(waiting) == 5 * 4
    finally:
        tansu.start()  # the same port, memory storage: an empty broker

    # Then once it is back the sweeper sends them, and a consumer finds every transition of every run
    clock.advance(rt.settings.projection_grace + 1)
    sent = sweep(rt).projections_sent
    assert len(sent) == 5 * 4
    events = consume_all(tansu.bootstrap, rt.settings.kafka_events_topic, f"after-{uuid.uuid4().hex}", until=5 * 4)
    assert {e["event_id"] for e in events} >= {r.body["event_id"] for r in waiting}
    for saga_id, mine in events_by_saga(events):
        assert sorted({e["run_version"] for e in mine})[-1] == rt.store.load(saga_id).version
