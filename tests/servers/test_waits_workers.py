"""Waits and signals with real workers (prefork), Redis and PostgreSQL: the HTTP API, the CLI, a
worker that is down when the signal comes, a process killed while it records a signal, and
10,000 parked runs of which the sweeper acts on the 100 that are due.

The sagas are in tests/support/wait_sagas.py; their steps run on the queue `waits`, served by the
worker of this module only (it loads that module through SAGA_EXTRA_MODULES).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import text

import tests.support.wait_sagas  # noqa: F401  (registers the sagas in this process too)
from tests.support.workers import WorkerProcess, worker_env
from tests.support.interfaces import new_id, wait_until
from workflows import get_runtime, get_saga, start_saga, wait_for
from workflows.interfaces.api import create_app
from workflows.interfaces.cli import main
from workflows.operations.signals import signal
from workflows.operations.sweeper import sweep
from workflows.runtime.container import Runtime, activate
from workflows.runtime.settings import get_settings

ROOT = Path(__file__).resolve().parents[2]
SAGAS = Path(sys.executable).parent / "sagas"
MODULES = "tests.support.sagas,tests.support.wait_sagas"
TOKEN = "w4it-token"
OK = {"approved": True, "reason": "fine"}


def env(**extra: str) -> dict[str, str]:
    return {**worker_env(SAGA_EXTRA_MODULES=MODULES), **extra}


@pytest.fixture(scope="module")
def waits_worker(app: Any) -> Iterator[WorkerProcess]:
    w = WorkerProcess("waits", "waits", concurrency=2, env=env())
    try:
        w.wait_ready(app, timeout=60)
        yield w
    finally:
        w.stop()


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    # the single token's caller is recorded as `api_token_name` (X-Operator is only a note, issue 31)
    settings = get_settings().model_copy(update={"api_token": TOKEN, "api_token_name": "alice"})
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def parked(saga: str = "tests.approval") -> str:
    saga_id = start_saga(saga, {}, saga_id=new_id("wait"))
    wait_until(lambda: get_saga(saga_id).state == "WAITING", timeout=60, what=f"{saga_id} WAITING")
    return saga_id


# ------------------------------------------------------------------ a worker down (first: before the
# module's worker on the queue `waits` is started)


def test_a_signal_sent_while_the_worker_is_down_is_applied_when_it_is_back(app: Any) -> None:
    w = WorkerProcess("waits-down", "waits", concurrency=1, env=env())
    try:
        w.wait_ready(app, timeout=60)
        saga_id = parked()
    finally:
        w.stop()
    # the worker is gone: the signal is recorded and ship's message waits in the broker
    answer = signal(saga_id, "approval", OK, idempotency_key="while-down", who="erin")
    assert answer.state == "RUNNING" and get_saga(saga_id).step("ship").status == "RUNNING"
    time.sleep(1)
    assert get_saga(saga_id).state == "RUNNING"
    w = WorkerProcess("waits-back", "waits", concurrency=1, env=env())
    try:
        w.wait_ready(app, timeout=60)
        assert wait_for(saga_id, timeout=60).state == "COMPLETED"
    finally:
        w.stop()


# ------------------------------------------------------------------ HTTP and CLI


def test_an_approval_by_http_completes_the_saga_and_bad_requests_change_nothing(waits_worker: WorkerProcess,
                                                                               client: TestClient) -> None:
    saga_id = parked()
    url = f"/api/sagas/{saga_id}/signals/approval"
    shown = client.get(f"/api/sagas/{saga_id}/status").json()
    assert shown["state"] == "WAITING" and shown["waiting_for"][0]["signal"] == "approval"
    assert client.get("/api/sagas", params={"state": "WAITING", "type": "tests.approval"}).json()["total"] >= 1

    # refused, nothing written: no token, a payload failing the model, an unknown saga, no such wait
    assert TestClient(client.app).post(url, json=OK).status_code == 401
    bad = client.post(url, json={"approved": "perhaps"}, headers={"Idempotency-Key": "a-1"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_input"
    assert client.post("/api/sagas/nope/signals/approval", json=OK).status_code == 404
    other = client.post(f"/api/sagas/{saga_id}/signals/pickup", json={})
    assert other.status_code == 409 and "no wait for signal 'pickup'" in other.json()["message"]
    assert client.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert get_saga(saga_id).signals == []

    # the approval, sent twice with one key: one signal
    r = client.post(url, json=OK, headers={"Idempotency-Key": "a-1", "X-Operator": "alice"})
    assert r.status_code == 200, r.text
    assert r.json()["signal"]["consumed_by"] == "manager_approval" and r.json()["duplicate"] is False
    again = client.post(url, json=OK, headers={"Idempotency-Key": "a-1", "X-Operator": "alice"})
    assert again.status_code == 200 and again.json()["duplicate"] is True

    view = wait_for(saga_id, timeout=60)
    assert view.state == "COMPLETED" and [(x.who, x.consumed_by) for x in view.signals] == [
        ("alice", "manager_approval")]
    late = client.post(url, json=OK, headers={"Idempotency-Key": "a-2"})
    assert late.status_code == 409 and late.json()["error"] == "invalid_operation"
    assert get_saga(saga_id).version == view.version


def test_an_approval_and_a_reject_by_the_cli(waits_worker: WorkerProcess) -> None:
    approved, rejected = parked(), parked()
    listed = CliRunner().invoke(main, ["list", "--state", "WAITING", "--type", "tests.approval", "--json"])
    assert listed.exit_code == 0 and {approved, rejected} <= {i["id"] for i in json.loads(listed.stdout)["items"]}
    shown = CliRunner().invoke(main, ["status", approved])
    assert "waiting: manager_approval for signal 'approval'" in shown.stdout

    out = subprocess.run([str(SAGAS), "--who", "carol", "signal", approved, "approval", "--data", json.dumps(OK),
                          "--idempotency-key", "cli-1"], cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "consumed by manager_approval" in out.stdout
    no = CliRunner().invoke(main, ["--who", "dave", "signal", rejected, "approval", "--data",
                                   '{"approved": false, "reason": "too dear"}', "--json"])
    assert no.exit_code == 0, no.output
    assert wait_for(approved, timeout=60).state == "COMPLETED"
    view = wait_for(rejected, timeout=60)
    assert view.state == "COMPENSATED" and view.failure_reason == "wait 'manager_approval' rejected by dave: too dear"
    assert [e.step for e in view.events if e.type == "StepCompensated"] == ["charge", "reserve"]
    refused = CliRunner().invoke(main, ["signal", rejected, "approval", "--data", json.dumps(OK)])
    assert refused.exit_code == 1 and "not waiting for signal" in refused.output


# ------------------------------------------------------------------ a process killed


KILLED_WHILE_RECORDING = """
import os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
import worker  # installs the runtime
from workflows.runtime.dispatch import CeleryDispatcher
from workflows.operations.signals import signal as send

where = sys.argv[3]
if where == "in-transaction":   # the run's version bumped, the signal row not written yet: die
    @event.listens_for(Engine, "before_cursor_execute")
    def die(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("INSERT INTO SAGA_SIGNALS"):
            os.kill(os.getpid(), signal.SIGKILL)
else:                            # committed, nothing published yet: die
    def die_on_publish(self, run, cmd):
        os.kill(os.getpid(), signal.SIGKILL)
    CeleryDispatcher.send_step = die_on_publish
send(sys.argv[1], "approval", {"approved": True}, idempotency_key=sys.argv[2], who="killed")
print("not killed")
"""


def test_a_process_killed_while_it_records_a_signal_leaves_no_half_state_and_resending_is_safe(
        waits_worker: WorkerProcess) -> None:
    saga_id = parked()
    before = get_runtime().store.load(saga_id)

    # killed inside the transaction: nothing of it is left
    died = subprocess.run([sys.executable, "-c", KILLED_WHILE_RECORDING, saga_id, "k-1", "in-transaction"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert died.returncode == -9, died.stdout + died.stderr
    assert get_runtime().store.load(saga_id) == before and get_saga(saga_id).signals == []

    # killed after the commit, before the publish: the signal is recorded and ship is RUNNING,
    # but no message was sent
    died = subprocess.run([sys.executable, "-c", KILLED_WHILE_RECORDING, saga_id, "k-1", "after-commit"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert died.returncode == -9, died.stdout + died.stderr
    view = get_saga(saga_id)
    assert [x.idempotency_key for x in view.signals] == ["k-1"] and view.step("ship").status == "RUNNING"
    time.sleep(1)
    assert get_saga(saga_id).step("ship").attempts == 0  # no message: nothing ran it

    # re-sending the same signal is a duplicate, and it publishes what the lost publish had to
    answer = signal(saga_id, "approval", OK | {"reason": ""}, idempotency_key="k-1", who="killed")
    assert answer.duplicate
    view = wait_for(saga_id, timeout=60)
    assert view.state == "COMPLETED" and len(view.signals) == 1
    assert view.event_types().count("SignalReceived") == 1 and view.step("ship").attempts == 1


# ------------------------------------------------------------------ 10,000 parked runs


def test_ten_thousand_parked_runs_and_a_sweep_that_acts_on_the_hundred_due(app: Any) -> None:
    rt = get_runtime()
    sweep(rt)  # what other tests left due is swept first: the sweep measured below sees only these runs
    now = rt.clock()
    past = now - timedelta(days=15)  # a 14-day wait begun then is due now
    due_ids = []
    with activate(Runtime(app=rt.app, settings=rt.settings, clock=lambda: past, ids=rt.ids,
                          _store=rt.store, _dispatcher=rt.dispatcher)):
        for _ in range(100):
            due_ids.append(start_saga("tests.parked", {}))
    t0 = time.perf_counter()
    parked_ids = [start_saga("tests.parked", {}) for _ in range(9_900)]
    created_s = time.perf_counter() - t0
    assert get_saga(parked_ids[-1]).state == "WAITING" and get_saga(due_ids[0]).state == "WAITING"

    with rt.store.sessions() as s:  # the due query is an index range, not a scan of every parked run
        s.execute(text("ANALYZE saga_steps"))
        plan = "\n".join(r[0] for r in s.execute(text(
            "EXPLAIN SELECT saga_id, name FROM saga_steps WHERE status = 'WAITING' AND deadline_at < :now "
            "ORDER BY deadline_at LIMIT 500"), {"now": now}))
    assert "ix_saga_steps_deadline" in plan and "Seq Scan" not in plan, plan

    t0 = time.perf_counter()
    report = sweep(rt, now=now + timedelta(seconds=1))
    sweep_s = time.perf_counter() - t0
    timed_out = {x.split(":")[0] for x in report.waits_timed_out}
    assert timed_out == set(due_ids), len(timed_out)
    t0 = time.perf_counter()
    idle = sweep(rt, now=now + timedelta(seconds=2))
    idle_s = time.perf_counter() - t0
    assert idle.waits_timed_out == []
    assert get_saga(due_ids[0]).state == "COMPENSATED" and get_saga(parked_ids[0]).state == "WAITING"
    print(f"\n10,000 parked runs: created in {created_s:.1f} s; sweep acting on the 100 due: {sweep_s * 1000:.0f} ms; "
          f"a sweep with nothing due: {idle_s * 1000:.0f} ms")
    Path(os.environ.get("WAITS_BENCH_OUT", "/tmp/waits-sweep.json")).write_text(json.dumps(
        {"parked": 10_000, "due": 100, "create_s": created_s, "sweep_ms": sweep_s * 1000,
         "idle_sweep_ms": idle_s * 1000}))
