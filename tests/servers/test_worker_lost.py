"""A step whose function kills its worker on every delivery (issue 20), with a real worker.

Redis or RabbitMQ, PostgreSQL and the prefork pool of 2: the step calls `os._exit(1)`, Celery's
`reject_on_worker_lost` requeues its message, marked redelivered (by kombu's Redis transport; by
RabbitMQ itself), and the step task counts each redelivery in the database before the function
runs again. With
`max_attempts` 3 the function runs 3 times; the 4th delivery dead-letters the step ("worker lost
3 times") and compensates it as unknown. Normal sagas on the same queue complete meanwhile.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.amqp import amqp_worker, start_through
from workflows import get_saga, start_saga, wait_for

Start = Callable[[str, dict[str, Any]], str]


@pytest.fixture(scope="module")
def rabbitmq_starts(app) -> Iterator[Start]:  # type: ignore[no-untyped-def]
    with amqp_worker("lost-amqp", concurrency=2) as (_, client):
        yield lambda saga, data: start_through(client, saga, data)


@pytest.fixture(params=["redis", "rabbitmq"])
def start(request) -> Start:  # type: ignore[no-untyped-def]
    """Starts a run whose messages go through the broker of the test's parameter."""
    if request.param == "redis":
        request.getfixturevalue("running_worker")
        return lambda saga, data: start_saga(saga, data)
    return request.getfixturevalue("rabbitmq_starts")  # type: ignore[no-any-return]


def effects(redis_client, saga_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]


def test_a_step_that_kills_its_worker_every_time_is_dead_lettered_and_compensated_while_its_queue_goes_on(
        redis_client, start: Start):  # type: ignore[no-untyped-def]
    # Given a saga whose step b ends its pool process on every delivery, and 8 normal sagas
    # started with it on the same queue ("tests", consumed by the pool of 2)
    began = time.monotonic()
    poisoned = start("tests.three", {"behaviour": {"b": {"exit": True}}})
    normal = [start("tests.three", {"n": i}) for i in range(8)]

    # When they run
    view = wait_for(poisoned, timeout=120)
    elapsed = time.monotonic() - began
    finished = [wait_for(saga_id, timeout=60) for saga_id in normal]

    # Then the normal sagas completed, each step once
    assert [v.state for v in finished] == ["COMPLETED"] * 8
    assert all(effects(redis_client, v.id) == ["action:a:1", "action:b:1", "action:c:1"] for v in finished)
    # the poisoned one ran b 3 times (max_attempts), then was given up: dead-lettered, compensated
    assert view.state == "COMPENSATED", (view.state, view.event_types())
    ran = effects(redis_client, poisoned)
    assert ran.count("action:b:1") == 3 and ran[-1] == "compensation:a:1", ran
    b = view.step("b")
    assert b.redeliveries == 3 and b.status == "TIMED_OUT"  # no compensation declared for b: unknown, skipped
    assert [e.detail["redeliveries"] for e in view.events if e.type == "StepRedelivered"] == [1, 2, 3]
    [dl] = view.dead_letters
    assert (dl.step, dl.kind, dl.exception) == ("b", "action", "WorkerLost: worker lost 3 times")
    assert "worker lost 3 times" in (view.failure_reason or "")
    # within a bound far below the sweeper's (b's timeout of 10 s + grace) and the old crash loop
    print(f"poisoned saga terminal after {elapsed:.1f} s")
    assert elapsed < 60, elapsed
    # nothing more happens to it afterwards
    time.sleep(1)
    assert get_saga(poisoned).version == view.version and effects(redis_client, poisoned) == ran

    # And the redeliveries are visible to an operator: the API's status and saga, the CLI's timeline
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from workflows.interfaces.api import create_app
    from workflows.interfaces.cli import main
    from workflows.runtime.settings import get_settings

    settings = get_settings().model_copy(update={"api_token": "t"})
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t"}) as api:
        status = api.get(f"/api/sagas/{poisoned}/status").json()
        full = api.get(f"/api/sagas/{poisoned}").json()
        metrics = api.get("/metrics").text
    from prometheus_client.parser import text_string_to_metric_families

    counted = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
               if s.name == "saga_step_redeliveries_total"
               and s.labels == {"saga_type": "tests.three", "step": "b", "kind": "action"}]
    assert counted and counted[0] >= b.redeliveries, metrics[-3000:]  # every such saga's, this one's included
    assert [(s["name"], s["redeliveries"]) for s in status["steps"]] == [("a", 0), ("b", 3), ("c", 0)]
    assert full["steps"][1]["redeliveries"] == 3 and full["steps"][1]["compensation_redeliveries"] == 0
    assert [h["type"] for h in status["history"]].count("StepRedelivered") == 3
    shown = CliRunner().invoke(main, ["status", poisoned], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "redelivered" in shown.stdout and "StepRedelivered" in shown.stdout and "StepWorkerLost" in shown.stdout
    b_row = next(line for line in shown.stdout.splitlines() if "TIMED_OUT" in line)  # the steps table's row of b
    assert "TIMED_OUT" in b_row and " 3 " in b_row, b_row
