"""What comes next, over HTTP, in the CLI and in the console: a parked run's wait and the step
after it, and the compensations that would run if it failed now, as the engine's walker plans
them (`core.outlook`; the engine tests are tests/pure/test_outlook.py). In process: SQLite, the real
store and loop, a recording dispatcher delivered by the in-process `Worker`."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import tests.support.wait_sagas  # noqa: F401  (registers the sagas)
from workflows.testing import Clock, Worker
from workflows import start_saga
from workflows.interfaces.api import create_app
from workflows.interfaces.cli.saga_view import print_saga
from workflows.operations.client import get_saga, what_next
from workflows.operations.signals import signal
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.store.db import migrate

TOKEN = "outlook-token"


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    url = f"sqlite:///{tmp_path / 'outlook.db'}"
    migrate(url)
    runtime = Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path), clock=Clock(),
                      ids=lambda: uuid.uuid4().hex, _dispatcher=RecordingDispatcher())
    with activate(runtime):
        yield runtime


@pytest.fixture
def client(rt: Runtime) -> Iterator[TestClient]:
    app = create_app(rt.settings.model_copy(update={"api_token": TOKEN}), runtime=rt)
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def parked(rt: Runtime) -> str:
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    saga_id = start_saga("tests.approval", {})
    Worker(rt, rt.dispatcher).drain()
    return saga_id


def test_the_status_of_a_parked_run_says_what_comes_next_and_what_would_be_undone(rt: Runtime,
                                                                                   client: TestClient) -> None:
    saga_id = parked(rt)

    r = client.get(f"/api/sagas/{saga_id}/status")

    assert r.status_code == 200
    assert r.json()["state"] == "WAITING"
    assert r.json()["what_next"] == {
        "to_run": [["manager_approval"], ["ship"]],
        "compensations": [{"stage": 1, "compensate": ["charge"], "waits_for": [], "stuck": []},
                          {"stage": 0, "compensate": ["reserve"], "waits_for": [], "stuck": []}],
        "if_failed_now": True}


def test_a_rejected_run_compensates_in_the_order_the_status_showed(rt: Runtime, client: TestClient) -> None:
    saga_id = parked(rt)
    shown = client.get(f"/api/sagas/{saga_id}/status").json()["what_next"]["compensations"]

    signal(saga_id, "approval", {"approved": False, "reason": "no"}, idempotency_key="k1", who="ada")
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    Worker(rt, rt.dispatcher).drain()

    view = get_saga(saga_id)
    assert view.state == "COMPENSATED"
    undone = [e.step for e in view.events if e.type == "CompensationDispatched"]
    assert undone == [step for stage in shown for step in stage["compensate"]]
    after = client.get(f"/api/sagas/{saga_id}/status").json()["what_next"]
    assert after == {"to_run": [], "compensations": [], "if_failed_now": False}


def test_the_cli_status_and_the_console_show_it_too(rt: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    saga_id = parked(rt)

    print_saga(get_saga(saga_id), True, what_next(saga_id))
    assert json.loads(capsys.readouterr().out)["what_next"]["to_run"] == [["manager_approval"], ["ship"]]
    print_saga(get_saga(saga_id), False, what_next(saga_id))
    text = capsys.readouterr().out
    assert "next: manager_approval → ship" in text
    assert "1. charge" in text and "2. reserve" in text

    console = create_app(rt.settings.model_copy(update={"console_open": True}), runtime=rt)
    with TestClient(console) as browser:
        page = browser.get(f"/console/sagas/{saga_id}")
    assert page.status_code == 200, page.text[:300]
    assert 'id="what-next"' in page.text
    assert '<li data-stage="1">charge' in page.text and '<li data-stage="0">reserve' in page.text
