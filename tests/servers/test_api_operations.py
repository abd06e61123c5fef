"""Operating sagas over HTTP with a real worker: cancel, resume, retry, dead letters, metrics,
and the docs' curl calls (docs/guide/api-and-cli.md) against the API served by uvicorn.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support.interfaces import failed_saga, stop_process_group, wait_until
from workflows import get_runtime, get_saga, start_saga, wait_for
from workflows.interfaces.api import create_app
from workflows.operations.credentials import access_store
from workflows.runtime.settings import get_settings

pytestmark = pytest.mark.usefixtures("running_worker")

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(get_settings().model_copy(update={"api_token": TOKEN, "test_mode": True}))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def note_on(target: str) -> str | None:
    """The X-Operator note of the first allowed action on `target`, in the access audit."""
    return next(r.note for r in reversed(access_store().audit_rows(limit=1000))
                if r.target == target and r.outcome == "allowed")


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
    # who acted is the authenticated caller (the single token's admin, "token"), X-Operator a note (issue 31)
    assert cancelled.detail["who"] == "token" and cancelled.detail["reason"] == "customer asked"
    assert note_on(f"saga:{saga_id}") == "dana"
    again = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "twice"})
    assert again.status_code == 409
    assert again.json()["error"] == "invalid_operation" and "RUNNING" in again.json()["message"]


def test_exhausted_compensation_is_listed_shown_and_redriven_once(client, redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)

    listed = client.get("/api/dead-letters", params={"saga_id": saga_id}).json()
    [dl] = listed
    shown = client.get(f"/api/dead-letters/{dl['id']}").json()
    assert (shown["kind"], shown["step"], shown["status"], shown["args"]) == ("compensation", "a", "OPEN",
                                                                             [saga_id, "a"])
    assert "Traceback" in shown["traceback"]
    assert client.get(f"/api/sagas/{saga_id}/status").json()["open_dead_letters"] == [dl["id"]]

    redis_client.delete(f"switch:{saga_id}:a")  # the operator fixes the cause
    r = client.post(f"/api/dead-letters/{dl['id']}/redrive", json={"reason": "fixed"}, headers={"X-Operator": "eve"})

    assert r.status_code == 200 and r.json()["status"] == "REDRIVEN"
    assert note_on(f"dl:{dl['id']}") == "eve"
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    again = client.post(f"/api/dead-letters/{dl['id']}/redrive")
    assert again.status_code == 409 and "REDRIVEN" in again.json()["message"]
    assert client.get("/api/dead-letters", params={"saga_id": saga_id}).json() == []
    every = client.get("/api/dead-letters", params={"saga_id": saga_id, "status": "ALL"}).json()
    assert [d["status"] for d in every] == ["REDRIVEN"]


def test_resume_compensates_a_failed_saga_and_resolves_its_dead_letter(client, redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)
    redis_client.delete(f"switch:{saga_id}:a")

    r = client.post(f"/api/sagas/{saga_id}/resume", json={"reason": "fixed"}, headers={"X-Operator": "hana"})

    assert r.status_code == 200 and r.json()["state"] in ("COMPENSATING", "COMPENSATED")
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    assert client.post(f"/api/sagas/{saga_id}/resume").status_code == 409
    assert client.get("/api/dead-letters", params={"saga_id": saga_id}).json() == []
    [dl] = client.get("/api/dead-letters", params={"saga_id": saga_id, "status": "ALL"}).json()
    assert (dl["status"], dl["resolution"]) == ("REDRIVEN", "resumed by token")
    assert note_on(f"saga:{saga_id}") == "hana"
    assert client.post(f"/api/dead-letters/{dl['id']}/discard", json={"reason": "again"}).status_code == 409


def test_discard_needs_a_reason_and_is_recorded(client):  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail_times": 99}}}), timeout=30)
    [dl] = client.get("/api/dead-letters", params={"saga_id": view.id}).json()

    assert client.post(f"/api/dead-letters/{dl['id']}/discard", json={}).status_code == 422  # needs a reason
    discarded = client.post(f"/api/dead-letters/{dl['id']}/discard", json={"reason": "customer re-ordered"})

    assert discarded.status_code == 200 and discarded.json()["status"] == "DISCARDED"
    assert "DeadLetterDiscarded" in get_saga(view.id).event_types()


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
    from workflows.operations.sweeper import sweep

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
        assert (value(after, "saga_step_retries_total", **labels)
                == value(before, "saga_step_retries_total", **labels) + 2)
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


# ------------------------------------------------------------------ the docs' curl block, as written, against uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def docs_try_it_block() -> str:
    """The runnable curl block of the docs' HTTP API section (the one that sets API=...)."""
    text = (ROOT / "docs" / "guide" / "api-and-cli.md").read_text()
    section = text[text.index("<!-- section: interfaces -->"):text.index("<!-- /section: interfaces -->")]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    [block] = [b for b in blocks if b.startswith("API=http://127.0.0.1:8000\n")]
    return block


@pytest.fixture
def uvicorn_api() -> Iterator[str]:
    """`uvicorn api:app` (the docs' command) in a subprocess on a free loopback port, token and test mode on."""
    port = free_port()
    log = Path(f"/tmp/saga-test-uvicorn-{os.getpid()}-{port}.log")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SAGA_API_TOKEN": TOKEN, "SAGA_TEST_MODE": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30)
        yield base
    finally:
        stop_process_group(proc)


def test_docs_curl_calls_work_as_written_against_uvicorn(uvicorn_api):  # type: ignore[no-untyped-def]
    from tasks.inventory import available

    script = docs_try_it_block().replace("http://127.0.0.1:8000", uvicorn_api)
    # Every curl must get a 2xx: --fail-with-body turns any other answer into a failed script.
    prelude = "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n"

    done = subprocess.run(["bash", "-c", prelude + script], env={**os.environ, "SAGA_API_TOKEN": TOKEN},
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert '"status":"ok","database":"ok","broker":"ok"' in done.stdout
    assert "sagas_started_total" in done.stdout
    orders = {v.input["order_id"]: v for v in
              (get_saga(v.id) for v in get_runtime().store.list(saga_type="order_fulfillment", limit=500)[0])
              if v.input["order_id"] in ("1001", "1002")}
    assert wait_for(orders["1001"].id, timeout=30).state == "COMPLETED"
    second = wait_for(orders["1002"].id, timeout=30)
    assert second.state == "COMPENSATED" and second.step("process_payment").attempts == 1
    assert orders["1001"].idempotency_key == "order-1001"
    assert available("SKU-1") == 98
