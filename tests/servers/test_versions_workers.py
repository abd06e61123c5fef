"""A rolling deploy with real workers (Redis, PostgreSQL, prefork): versions 1 and 2 of one saga.

Workers get different code through SAGA_EXTRA_MODULES: `tests.support.versions_v1` (version 1
only), `tests.support.versions_v2` (version 2 only) or both; the step tasks (the services) are
the same in every worker (tests/support/versioned.py). This process holds both versions, so it
can start a run on either. Every effect names the worker that ran it.
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.workers import WorkerProcess, worker_env
from tests.support.interfaces import wait_until
from tests.support.versioned import NAME
import tests.support.versions_v1  # noqa: F401  (this process starts runs on both versions)
import tests.support.versions_v2  # noqa: F401
from workflows import get_saga, start_saga, wait_for
from workflows.operations.versions import version_report
from workflows.runtime.container import get_runtime

QUEUE = "versions"
V1 = "tests.support.sagas,tests.support.versions_v1"
V2 = "tests.support.sagas,tests.support.versions_v2"
V1_V2 = "tests.support.sagas,tests.support.versions_v1,tests.support.versions_v2"


def start_worker(app: Any, name: str, modules: str) -> WorkerProcess:
    w = WorkerProcess(f"{name}-{uuid.uuid4().hex[:6]}", QUEUE, concurrency=2,
                      env=worker_env(SAGA_EXTRA_MODULES=modules, SAGA_TEST_WORKER=name))
    w.wait_ready(app, timeout=60)
    return w


@pytest.fixture
def workers(app: Any) -> Iterator[dict[str, WorkerProcess]]:
    started: dict[str, WorkerProcess] = {}
    try:
        yield started
    finally:
        for w in started.values():
            w.stop()


def effects(redis_client: Any, saga_id: str) -> list[str]:
    return [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]


def hold(redis_client: Any, saga_id: str, step: str) -> None:
    redis_client.set(f"hold:{saga_id}:{step}", 1, ex=600)


def held_at(redis_client: Any, saga_id: str, step: str) -> bool:
    return any(e.startswith(f"action:{step}:") for e in effects(redis_client, saga_id))


def test_a_rolling_deploy_v1_runs_finish_on_v1_new_runs_use_v2_and_nothing_is_dead_lettered(
        app: Any, workers: dict[str, WorkerProcess], redis_client: Any) -> None:
    # Given a worker with version 1 only, and two v1 runs held at their charge step
    workers["old"] = start_worker(app, "old", V1)
    ids = {k: f"deploy-{k}-{uuid.uuid4().hex[:8]}" for k in ("v1_ok", "v1_undo")}
    for saga_id in ids.values():
        hold(redis_client, saga_id, "charge")
    start_saga(NAME, {"hold": ["charge"]}, saga_id=ids["v1_ok"], version=1)
    start_saga(NAME, {"hold": ["charge"], "fail": ["ship"]}, saga_id=ids["v1_undo"], version=1)
    for saga_id in ids.values():
        wait_until(lambda s=saga_id: held_at(redis_client, s, "charge"), 60, f"{saga_id} held at charge")

    # When the workers are rolled: the old one stops, one with v1 and v2 and one with v2 only start
    workers.pop("old").stop()
    workers["both"] = start_worker(app, "both", V1_V2)
    workers["new"] = start_worker(app, "new", V2)
    # and new runs start meanwhile (on the newest version, 2)
    new_ok = start_saga(NAME, {})
    new_undo = start_saga(NAME, {"fail": ["ship"]})
    for saga_id in ids.values():
        redis_client.delete(f"hold:{saga_id}:charge")

    views = {k: wait_for(saga_id, timeout=120) for k, saga_id in ids.items()}
    views["v2_ok"], views["v2_undo"] = wait_for(new_ok, timeout=120), wait_for(new_undo, timeout=120)

    # Then the v1 runs finished on v1: no fraud check, their compensations are v1's, and no v1
    # step ran on the worker that has only v2
    assert [(k, v.state, v.saga_version) for k, v in views.items()] == [
        ("v1_ok", "COMPLETED", 1), ("v1_undo", "COMPENSATED", 1), ("v2_ok", "COMPLETED", 2),
        ("v2_undo", "COMPENSATED", 2)]
    done = {k: effects(redis_client, v.id) for k, v in views.items()}
    for k in ("v1_ok", "v1_undo"):
        assert all(e.split(":")[3] == "v1" for e in done[k]), done[k]  # the step functions saw version 1
        assert not any(":fraud_check:" in e for e in done[k]), done[k]
        assert not any(e.endswith(":new") for e in done[k]), done[k]
    assert [e.rsplit(":", 1)[0] for e in done["v1_undo"] if e.startswith("compensation:")] == [
        "compensation:charge:versions.release_v1:v1", "compensation:reserve:versions.release_v1:v1"]
    # the new runs used v2: its fraud check, its renamed compensation
    assert any(e.startswith("action:fraud_check:") for e in done["v2_ok"])
    assert [e.rsplit(":", 1)[0] for e in done["v2_undo"] if e.startswith("compensation:")] == [
        "compensation:charge:versions.release_v2:v2", "compensation:reserve:versions.release_v2:v2"]
    # and nothing was dead-lettered
    assert all(get_saga(v.id).dead_letters == [] for v in views.values())
    assert get_runtime().store.dead_letters(status=None, saga_id=ids["v1_ok"]) == []


def test_a_worker_with_only_v2_hands_a_v1_step_on_until_a_v1_worker_takes_it(
        app: Any, workers: dict[str, WorkerProcess], redis_client: Any) -> None:
    # Given the only worker running has version 2 alone
    workers["new"] = start_worker(app, "new", V2)
    saga_id = start_saga(NAME, {}, version=1)

    # Then it receives the v1 step, hands it on (on the record), never runs it, never dead-letters it
    wait_until(lambda: "StepHandedOn" in get_saga(saga_id).event_types(), 60, "the v1 step handed on")
    log = workers["new"].log
    wait_until(lambda: sum(saga_id in line and "handed on" in line for line in log.read_text().splitlines()) >= 3,
               60, "three hand-offs in the worker's log")  # received three times: still nothing ran
    view = get_saga(saga_id)
    handed = next(e for e in view.events if e.type == "StepHandedOn")
    assert handed.step == "reserve" and handed.detail["saga_version"] == 1 and handed.detail["worker_versions"] == [2]
    assert view.state == "RUNNING" and view.step("reserve").status == "RUNNING" and view.step("reserve").attempts == 0
    assert effects(redis_client, saga_id) == [] and view.dead_letters == []
    # the versions report shows the run on v1, and no live worker holding v1
    v1 = next(v for v in version_report(get_runtime()) if (v.saga_type, v.saga_version) == (NAME, 1))
    assert v1.active >= 1 and v1.workers == []

    # When a worker with version 1 starts, it takes the handed-on message and finishes the run on v1
    workers["old"] = start_worker(app, "old", V1)
    view = wait_for(saga_id, timeout=120)
    assert (view.state, view.saga_version) == ("COMPLETED", 1)
    assert [e.rsplit(":", 1)[1] for e in effects(redis_client, saga_id)] == ["old", "old", "old"]
    assert view.dead_letters == [] and get_runtime().store.dead_letters(status=None, saga_id=saga_id) == []


def test_a_worker_whose_code_changed_a_recorded_shape_without_a_version_bump_refuses_to_start(
        app: Any, workers: dict[str, WorkerProcess]) -> None:
    # Given version 1's shape recorded by a worker that held it
    workers["old"] = start_worker(app, "old", V1)
    # When a worker whose version 1 has a step more starts
    bad = WorkerProcess(f"bad-{uuid.uuid4().hex[:6]}", QUEUE, concurrency=1,
                        env=worker_env(SAGA_EXTRA_MODULES="tests.support.sagas,tests.support.versions_v1_changed",
                                       SAGA_TEST_WORKER="bad"))
    try:
        # Then it exits before consuming anything, saying what changed and what to do
        code = wait_until(lambda: bad.proc.poll() is not None and (bad.proc.returncode,), 90, "the worker exited")
        log = bad.log.read_text()
        assert code[0] != 0
        assert "VersionConflict" in log and "steps added: ['fraud_check']" in log, log[-3000:]
        assert f"Saga('{NAME}', version=2, ...)" in log
    finally:
        bad.stop()
