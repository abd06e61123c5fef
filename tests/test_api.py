"""The HTTP API against the real app object, a real worker, Redis and PostgreSQL.

Given a web app calling the API, when it starts, reads and operates sagas, then the answers
say what happened, errors are JSON with a clear message, and refused requests write nothing.
"""
from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from workflows import get_runtime, get_saga, start_saga, wait_for
from workflows.api import create_app
from workflows.models import SagaRow
from workflows.runtime import Runtime
from workflows.settings import Settings, get_settings

pytestmark = pytest.mark.usefixtures("running_worker")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def new_id() -> str:
    return f"api-{uuid.uuid4().hex[:12]}"


def saga_count() -> int:
    with get_runtime().store.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(SagaRow)) or 0)


def wait_until(predicate, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition not met")


def failed_saga(redis_client) -> str:  # type: ignore[no-untyped-def]
    """A tests.three saga whose compensation of `a` ran out of retries: FAILED, one open dead letter."""
    saga_id = new_id()
    redis_client.set(f"switch:{saga_id}:a", 1)  # a's compensation fails until the switch is removed
    data = {"behaviour": {"c": {"fail": "permanent"}}, "compensation_behaviour": {"a": {"switch": True}}}
    assert wait_for(start_saga("tests.three", data, saga_id=saga_id), timeout=30).state == "FAILED"
    return saga_id


@pytest.fixture
def api_app():  # type: ignore[no-untyped-def]
    return create_app(get_settings().model_copy(update={"api_token": TOKEN, "test_mode": True}))


@pytest.fixture
def client(api_app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(api_app, headers=AUTH) as c:
        yield c


# ------------------------------------------------------------------ health, docs, auth


def test_healthz_answers_without_a_token_when_database_and_broker_answer(api_app):  # type: ignore[no-untyped-def]
    with TestClient(api_app) as anonymous:
        r = anonymous.get("/healthz")

    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}


def test_healthz_answers_503_naming_what_is_down():  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = Runtime(app=Celery("down", broker=f"redis://127.0.0.1:{port}/0", set_as_current=False),
                   settings=Settings(database_url=f"postgresql+psycopg2://postgres@127.0.0.1:{port}/none"))

    r = TestClient(create_app(Settings(), runtime=down)).get("/healthz")

    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["database"].startswith("error: OperationalError")
    assert body["broker"].startswith("error: ")


def test_every_endpoint_but_healthz_refuses_a_missing_or_wrong_token(api_app):  # type: ignore[no-untyped-def]
    before = saga_count()
    anonymous = TestClient(api_app)
    endpoints = [(method.upper(), path) for path, item in api_app.openapi()["paths"].items() if path != "/healthz"
                 for method in item]
    assert len(endpoints) == 15  # every endpoint but /healthz

    for method, template in endpoints:
        path = template.replace("{saga_type}", "order_fulfillment").replace("{saga_id}", "x").replace("{dl_id}", "x")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            r = anonymous.request(method, path, headers=headers, json={} if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "unauthorized"
            assert "Bearer" in r.json()["message"] and r.headers["WWW-Authenticate"] == "Bearer"
    assert saga_count() == before


def test_openapi_documents_every_endpoint(client):  # type: ignore[no-untyped-def]
    paths = client.get("/openapi.json").json()["paths"]

    assert {"/api/sagas/{saga_type}", "/api/orders", "/api/sagas", "/api/sagas/{saga_id}/status",
            "/api/sagas/{saga_id}/cancel", "/api/dead-letters/{dl_id}/redrive", "/api/test/fail-next-request",
            "/healthz", "/metrics"} <= set(paths)
    assert client.get("/docs").status_code == 200
    types = client.get("/api/saga-types").json()
    order = next(t for t in types if t["name"] == "order_fulfillment")
    assert order["steps"] == ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
    assert "shipping_address" in order["input_schema"]["properties"]


# ------------------------------------------------------------------ starting and reading


def test_order_posted_by_a_web_app_completes_and_is_readable(client, order_factory):  # type: ignore[no-untyped-def]
    order = order_factory()

    r = client.post("/api/orders", json=order)

    assert r.status_code == 202
    body = r.json()
    saga_id = body["saga_id"]
    assert body["order_id"] == order["order_id"] and body["saga_type"] == "order_fulfillment"
    assert body["status_url"] == f"/api/sagas/{saga_id}/status" == r.headers["Location"]
    assert wait_for(saga_id, timeout=30).state == "COMPLETED"
    status = client.get(body["status_url"]).json()
    assert status["state"] == "COMPLETED" and status["terminal"] is True
    assert [(s["name"], s["status"], s["attempts"]) for s in status["steps"]] == [
        ("reserve_inventory", "SUCCEEDED", 1), ("process_payment", "SUCCEEDED", 1),
        ("create_shipment", "SUCCEEDED", 1), ("send_confirmation", "SUCCEEDED", 1)]
    assert status["steps"][1]["result"]["amount"] == "25.00"
    assert status["history"][0]["type"] == "SagaCreated" and status["history"][-1]["type"] == "SagaCompleted"
    full = client.get(f"/api/sagas/{saga_id}").json()
    assert full["input"]["order_id"] == order["order_id"]
    assert [e["type"] for e in full["events"]] == [h["type"] for h in status["history"]]
    assert full["dead_letters"] == []


def test_generic_start_validates_the_body_against_the_saga_input_model(client, order_factory):  # type: ignore[no-untyped-def]
    before = saga_count()
    bad = order_factory(items=[])

    refused = client.post("/api/sagas/order_fulfillment", json=bad)

    assert refused.status_code == 422
    assert refused.json()["error"] == "invalid_input"
    assert "items" in refused.json()["message"]
    assert refused.json()["errors"][0]["loc"] == ["items"]
    assert saga_count() == before

    started = client.post("/api/sagas/tests.three", json={})
    assert started.status_code == 202
    assert wait_for(started.json()["saga_id"], timeout=30).state == "COMPLETED"
    assert saga_count() == before + 1


@pytest.mark.parametrize("body", [
    {"order_id": "o-1"},                                             # most fields missing
    "items",                                                         # not an object
    None,                                                            # no body at all
])
def test_invalid_order_is_422_with_a_message_and_writes_nothing(client, order_factory, body):  # type: ignore[no-untyped-def]
    before = saga_count()

    r = client.post("/api/orders", json=body)

    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"
    assert r.json()["message"].startswith("invalid request: ")
    assert saga_count() == before


def test_order_with_a_zero_quantity_is_refused_field_by_field(client, order_factory):  # type: ignore[no-untyped-def]
    before = saga_count()
    order = order_factory()
    order["items"][0]["quantity"] = 0

    r = client.post("/api/orders", json=order)

    assert r.status_code == 422
    assert ["body", "items", 0, "quantity"] in [e["loc"] for e in r.json()["errors"]]
    assert saga_count() == before


def test_unknown_saga_type_is_404_and_writes_nothing(client):  # type: ignore[no-untyped-def]
    before = saga_count()

    r = client.post("/api/sagas/no_such_saga", json={"x": 1})

    assert r.status_code == 404
    assert r.json()["error"] == "unknown_saga_type"
    assert "no_such_saga" in r.json()["message"] and "order_fulfillment" in r.json()["message"]
    assert saga_count() == before


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/sagas/{id}"), ("GET", "/api/sagas/{id}/status"), ("POST", "/api/sagas/{id}/retry"),
    ("POST", "/api/sagas/{id}/resume"), ("GET", "/api/dead-letters/{id}"),
    ("POST", "/api/dead-letters/{id}/redrive"),
])
def test_unknown_saga_or_dead_letter_is_404_with_a_message(client, method, path):  # type: ignore[no-untyped-def]
    unknown = new_id()

    r = client.request(method, path.format(id=unknown))

    assert r.status_code == 404
    assert r.json()["error"] in ("saga_not_found", "dead_letter_not_found")
    assert unknown in r.json()["message"]


def test_cancel_and_discard_of_unknown_ids_are_404(client):  # type: ignore[no-untyped-def]
    assert client.post(f"/api/sagas/{new_id()}/cancel", json={"reason": "r"}).status_code == 404
    assert client.post(f"/api/dead-letters/{new_id()}/discard", json={"reason": "r"}).status_code == 404


def test_retried_request_with_the_same_idempotency_key_starts_one_saga(client, order_factory):  # type: ignore[no-untyped-def]
    order = order_factory()
    key = {"Idempotency-Key": f"order-{new_id()}"}
    before = saga_count()

    first = client.post("/api/orders", json=order, headers=key)
    again = client.post("/api/orders", json=order, headers=key)

    assert first.status_code == again.status_code == 202
    assert first.json()["saga_id"] == again.json()["saga_id"]
    assert saga_count() == before + 1
    assert get_saga(first.json()["saga_id"]).idempotency_key == key["Idempotency-Key"]
    assert wait_for(first.json()["saga_id"], timeout=30).state == "COMPLETED"


def test_idempotency_key_reused_for_other_content_is_409_and_writes_nothing(client, order_factory):  # type: ignore[no-untyped-def]
    key = {"Idempotency-Key": f"k-{new_id()}"}
    first = client.post("/api/sagas/tests.three", json={"n": 1}, headers=key)
    before = saga_count()

    r = client.post("/api/sagas/tests.three", json={"n": 2}, headers=key)

    assert r.status_code == 409
    assert r.json()["error"] == "idempotency_conflict"
    assert r.json()["saga_id"] == first.json()["saga_id"]
    assert key["Idempotency-Key"] in r.json()["message"]
    assert saga_count() == before
    wait_for(first.json()["saga_id"], timeout=30)


def test_list_pages_through_runs_filtered_by_type_and_state(client):  # type: ignore[no-untyped-def]
    ids = [client.post("/api/sagas/tests.three", json={"n": i}).json()["saga_id"] for i in range(3)]
    for saga_id in ids:
        wait_for(saga_id, timeout=30)

    first = client.get("/api/sagas", params={"type": "tests.three", "state": "COMPLETED", "limit": 2}).json()
    second = client.get(first["next"]).json()

    assert first["total"] >= 3 and first["limit"] == 2 and first["offset"] == 0
    assert {first["items"][0]["id"], first["items"][1]["id"], second["items"][0]["id"]} == set(ids)
    assert second["offset"] == 2 and second["total"] == first["total"]
    assert all(i["saga_type"] == "tests.three" and i["state"] == "COMPLETED" for i in first["items"] + second["items"])
    last = client.get("/api/sagas", params={"type": "tests.three", "offset": first["total"] - 1}).json()
    assert last["next"] is None


@pytest.mark.parametrize("params", [{"state": "DONE"}, {"limit": 0}, {"limit": 501}, {"offset": -1}])
def test_list_refuses_bad_paging_and_filters_with_422(client, params):  # type: ignore[no-untyped-def]
    r = client.get("/api/sagas", params=params)

    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


# ------------------------------------------------------------------ test mode


def test_fail_next_request_without_a_body_makes_the_next_order_compensate(client, order_factory):  # type: ignore[no-untyped-def]
    armed = client.post("/api/test/fail-next-request")
    assert armed.status_code == 200
    assert armed.json() == {"service": "payment", "times": 1, "permanent": True, "operation": "action",
                            "message": "injected by POST /api/test/fail-next-request"}

    saga_id = client.post("/api/orders", json=order_factory()).json()["saga_id"]

    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert view.step("process_payment").status == "FAILED" and view.step("process_payment").attempts == 1
    assert view.step("reserve_inventory").status == "COMPENSATED"
    # one call only: the next order goes through
    after = client.post("/api/orders", json=order_factory()).json()["saga_id"]
    assert wait_for(after, timeout=30).state == "COMPLETED"


def test_fail_next_request_with_a_transient_fault_is_retried_to_success(client, order_factory):  # type: ignore[no-untyped-def]
    assert client.post("/api/test/fail-next-request",
                       json={"service": "shipping", "times": 2, "permanent": False}).status_code == 200

    view = wait_for(client.post("/api/orders", json=order_factory()).json()["saga_id"], timeout=30)

    assert view.state == "COMPLETED"
    assert view.step("create_shipment").attempts == 3
    assert view.step("process_payment").attempts == 1


def test_fail_next_request_refuses_an_unknown_service(client):  # type: ignore[no-untyped-def]
    r = client.post("/api/test/fail-next-request", json={"service": "billing"})

    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "service"]


def test_fail_next_request_does_not_exist_without_test_mode():  # type: ignore[no-untyped-def]
    plain = create_app(get_settings().model_copy(update={"api_token": None, "test_mode": False}))

    r = TestClient(plain).post("/api/test/fail-next-request")

    assert r.status_code == 404
    assert r.json()["error"] == "not_found"


# ------------------------------------------------------------------ operator actions and dead letters


def test_cancel_compensates_a_running_saga_and_a_second_cancel_is_409(client):  # type: ignore[no-untyped-def]
    saga_id = client.post("/api/sagas/tests.three", json={"behaviour": {"b": {"sleep": 1.5}}}).json()["saga_id"]
    wait_until(lambda: get_saga(saga_id).step("b").status == "RUNNING")
    assert client.post(f"/api/sagas/{saga_id}/cancel", json={}).status_code == 422  # a reason is required

    r = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "customer asked"}, headers={"X-Operator": "dana"})

    assert r.status_code == 200 and r.json()["state"] in ("COMPENSATING", "COMPENSATED")
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    cancelled = next(e for e in view.events if e.type == "SagaCancelled")
    assert cancelled.detail["who"] == "dana" and cancelled.detail["reason"] == "customer asked"
    again = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "twice"})
    assert again.status_code == 409
    assert again.json()["error"] == "invalid_operation" and "RUNNING" in again.json()["message"]


def test_exhausted_compensation_is_listed_shown_and_redriven_once(client, redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)

    listed = client.get("/api/dead-letters", params={"saga_id": saga_id}).json()
    [dl] = listed
    shown = client.get(f"/api/dead-letters/{dl['id']}").json()
    assert (shown["kind"], shown["step"], shown["status"], shown["args"]) == ("compensation", "a", "OPEN", [saga_id, "a"])
    assert "Traceback" in shown["traceback"]
    assert client.get(f"/api/sagas/{saga_id}/status").json()["open_dead_letters"] == [dl["id"]]

    redis_client.delete(f"switch:{saga_id}:a")  # the operator fixes the cause
    r = client.post(f"/api/dead-letters/{dl['id']}/redrive", json={"reason": "fixed"}, headers={"X-Operator": "eve"})

    assert r.status_code == 200 and r.json()["status"] == "REDRIVEN"
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    again = client.post(f"/api/dead-letters/{dl['id']}/redrive")
    assert again.status_code == 409 and "REDRIVEN" in again.json()["message"]
    assert client.get("/api/dead-letters", params={"saga_id": saga_id}).json() == []
    assert [d["status"] for d in client.get("/api/dead-letters", params={"saga_id": saga_id, "status": "ALL"}).json()] == ["REDRIVEN"]


def test_resume_compensates_a_failed_saga_and_its_dead_letter_is_discarded(client, redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)
    redis_client.delete(f"switch:{saga_id}:a")

    r = client.post(f"/api/sagas/{saga_id}/resume", json={"reason": "fixed"})

    assert r.status_code == 200 and r.json()["state"] in ("COMPENSATING", "COMPENSATED")
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    assert client.post(f"/api/sagas/{saga_id}/resume").status_code == 409
    [dl] = client.get("/api/dead-letters", params={"saga_id": saga_id}).json()
    assert client.post(f"/api/dead-letters/{dl['id']}/discard", json={}).status_code == 422  # needs a reason
    discarded = client.post(f"/api/dead-letters/{dl['id']}/discard", json={"reason": "resolved by resume"})
    assert discarded.status_code == 200 and discarded.json()["status"] == "DISCARDED"
    assert "DeadLetterDiscarded" in get_saga(saga_id).event_types()


def test_retry_step_dispatches_a_stuck_compensation_again(client, redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)
    redis_client.delete(f"switch:{saga_id}:a")
    assert client.post(f"/api/sagas/{saga_id}/retry", json={"step": "b"}).status_code == 409  # b is not stuck

    r = client.post(f"/api/sagas/{saga_id}/retry", json={"step": "a", "reason": "try again"})

    assert r.status_code == 200
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED" and view.step("a").status == "COMPENSATED"
    again = client.post(f"/api/sagas/{saga_id}/retry")
    assert again.status_code == 409 and again.json()["error"] == "invalid_operation"


# ------------------------------------------------------------------ metrics


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(r.text) for s in f.samples}


def value(m: dict[Any, float], name: str, **labels: str) -> float:
    return m.get((name, frozenset(labels.items())), 0.0)


def test_metrics_are_computed_from_the_database(client, redis_client):  # type: ignore[no-untyped-def]
    from workflows.sweeper import sweep

    before = scrape(client)
    three = {"saga_type": "tests.three"}

    retried = wait_for(start_saga("tests.three", {"behaviour": {"a": {"fail_times": 2}}}), timeout=30)
    exhausted = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail_times": 99}}}), timeout=30)
    after = scrape(client)

    assert (retried.state, exhausted.state) == ("COMPLETED", "COMPENSATED")
    assert value(after, "saga_store_up") == 1
    assert value(after, "sagas_started_total", **three) == value(before, "sagas_started_total", **three) + 2
    assert value(after, "sagas_completed_total", **three) == value(before, "sagas_completed_total", **three) + 1
    assert value(after, "sagas_compensated_total", **three) == value(before, "sagas_compensated_total", **three) + 1
    for step in ("a", "c"):
        labels = {**three, "step": step, "kind": "action"}
        assert value(after, "saga_step_retries_total", **labels) == value(before, "saga_step_retries_total", **labels) + 2
    assert value(after, "saga_dead_letters", status="OPEN") == value(before, "saga_dead_letters", status="OPEN") + 1
    a_inf = {**three, "step": "a", "le": "+Inf"}
    assert value(after, "saga_step_duration_seconds_bucket", **a_inf) == value(
        before, "saga_step_duration_seconds_bucket", **a_inf) + 2
    assert value(after, "saga_step_duration_seconds_gsum", **three, step="a") > value(
        before, "saga_step_duration_seconds_gsum", **three, step="a")

    # a step whose queue nobody consumes is stuck once its deadline passes, until the sweeper acts
    orphan = start_saga("tests.orphan", {})
    stuck = wait_until(lambda: value(m := scrape(client), "sagas_stuck") > value(before, "sagas_stuck") and m)
    assert value(stuck, "sagas_by_state", saga_type="tests.orphan", state="RUNNING") >= 1
    assert f"{orphan}:lost" in sweep(get_runtime()).timed_out
    assert wait_for(orphan, timeout=30).state == "COMPENSATED"
    assert value(scrape(client), "sagas_stuck") == value(stuck, "sagas_stuck") - 1
