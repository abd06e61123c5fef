"""The HTTP API against the real app object, a real worker, Redis and PostgreSQL.

Given a web app calling the API, when it starts, reads and operates sagas, then the answers
say what happened, errors are JSON with a clear message, and refused requests write nothing.
"""
from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from celery import Celery
from fastapi.testclient import TestClient

from tasks.shop_api import routers as shop_routers
from tests.support.interfaces import new_id, saga_count
from workflows import get_saga, wait_for
from workflows.interfaces.api import create_app
from workflows.runtime.container import Runtime
from workflows.runtime.settings import Settings, get_settings

pytestmark = pytest.mark.usefixtures("running_worker")

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api_app():  # type: ignore[no-untyped-def]
    """The app `api.py` serves: the library's API with the example shop's routers, in test mode."""
    settings = get_settings().model_copy(update={"api_token": TOKEN, "test_mode": True})
    return create_app(settings, routers=shop_routers(settings))


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
    assert len(endpoints) == 21  # every endpoint but /healthz (signals; saga-versions and move; one saga type;
    # notifications)

    for method, template in endpoints:
        path = template.replace("{saga_type}", "order_fulfillment").replace("{saga_id}", "x").replace("{dl_id}", "x")
        path = path.replace("{name}", "approval")
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


def test_retry_of_a_step_the_saga_does_not_have_is_404_naming_its_steps(client, order_factory):  # type: ignore[no-untyped-def]
    saga_id = client.post("/api/orders", json=order_factory()).json()["saga_id"]
    before = client.get(f"/api/sagas/{saga_id}/status").json()

    r = client.post(f"/api/sagas/{saga_id}/retry", json={"step": "no_such_step", "reason": "r"})

    assert r.status_code == 404 and r.json()["error"] == "step_not_found"
    assert "no_such_step" in r.json()["message"] and "process_payment" in r.json()["message"]
    after = client.get(f"/api/sagas/{saga_id}/status").json()
    assert not [e for e in after["history"][len(before["history"]):] if "Retried" in e["type"]]


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


@pytest.mark.parametrize("params", [{"state": "DONE"}, {"limit": 0}, {"limit": 501}, {"offset": -1},
                                    {"offset": 315007645607731200000, "limit": 182},  # found by schemathesis: was a 500
                                    {"offset": 1_000_000_001}])
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
    settings = get_settings().model_copy(update={"api_token": None, "test_mode": False})
    plain = create_app(settings, routers=shop_routers(settings))

    r = TestClient(plain).post("/api/test/fail-next-request")

    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert "/api/orders" in plain.openapi()["paths"]  # the shop's orders are served without test mode


def test_restock_refuses_a_level_the_stock_column_cannot_hold(client):  # type: ignore[no-untyped-def]
    r = client.post("/api/test/restock", json={"SKU-HUGE": 10**12})

    assert r.status_code == 422 and r.json()["error"] == "invalid_request"


def test_restock_sets_stock_levels_in_test_mode(client, order_factory):  # type: ignore[no-untyped-def]
    from tasks.inventory import available

    sku = f"SKU-{new_id()}"

    r = client.post("/api/test/restock", json={sku: 7})

    assert r.status_code == 200 and r.json() == {sku: 7}
    assert available(sku) == 7
    assert client.post("/api/test/restock", json={sku: -1}).status_code == 422
    assert available(sku) == 7


# ------------------------------------------------------------------ the library and the deployment


def test_the_library_api_serves_no_shop_endpoint_and_imports_neither_the_shop_nor_the_deployment():  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    paths = create_app(get_settings().model_copy(update={"api_token": None, "test_mode": True})).openapi()["paths"]
    assert "/api/sagas/{saga_type}" in paths and "/healthz" in paths
    assert not [p for p in paths if p == "/api/orders" or p.startswith("/api/test/")]
    done = subprocess.run([sys.executable, "-c", "import sys, workflows.interfaces.api; "
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tasks', 'worker', 'api')))"],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ business ids


def test_an_order_posted_runs_under_its_own_id_and_its_status_is_read_by_it(client, order_factory):  # type: ignore[no-untyped-def]
    # Given an order posted by the shop's checkout
    order = order_factory()
    r = client.post("/api/orders", json=order)

    # Then its saga runs under the order's own id, as the seed reads it: /api/sagas/order-123/status
    assert r.status_code == 202 and r.json()["saga_id"] == order["order_id"]
    assert r.headers["Location"] == f"/api/sagas/{order['order_id']}/status"
    assert wait_for(order["order_id"], timeout=30).state == "COMPLETED"
    assert client.get(f"/api/sagas/{order['order_id']}/status").json()["state"] == "COMPLETED"

    # And the same order posted again is the same run
    again = client.post("/api/orders", json=order)
    assert again.status_code == 202 and again.json()["saga_id"] == order["order_id"]


def test_status_and_history_are_found_by_idempotency_key(client):  # type: ignore[no-untyped-def]
    # Given a run started under a business key
    key = f"invoice-{new_id()}"
    saga_id = client.post("/api/sagas/tests.three", json={"n": 1}, headers={"Idempotency-Key": key}).json()["saga_id"]
    assert saga_id != key

    # When it is read by its key: no run has that id, so the key's run answers; `?key=true` only by key
    status = client.get(f"/api/sagas/{key}/status")
    explicit = client.get(f"/api/sagas/{key}/status", params={"key": "true"})
    full = client.get(f"/api/sagas/{key}")

    # Then the same run as by its id, with its history
    assert status.status_code == explicit.status_code == full.status_code == 200
    assert status.json()["id"] == explicit.json()["id"] == full.json()["id"] == saga_id
    assert full.json()["events"][0]["type"] == "SagaCreated"
    # a run id is not a key: asked only by key, it is 404 naming the key
    by_key_only = client.get(f"/api/sagas/{saga_id}/status", params={"key": "true"})
    assert by_key_only.status_code == 404 and saga_id in by_key_only.text
    missing = client.get("/api/sagas/no-such-order/status")
    assert missing.status_code == 404 and "nor with that idempotency key" in missing.text
