"""Child sagas with real workers (Redis, PostgreSQL, prefork pools).

`tests.with_child` (a, then the child saga `tests.kid` of k1 and k2, then c) is in
tests/support/sagas.py; `crash.with_child` (the same shape, on the queue only this file's crash
worker consumes) in tests/support/crash_sagas.py. Every call of a test step appends
"<kind>:<step>:<attempt>" to the Redis list effects:<saga id>, the id being the step message's
first argument: a child's calls land under the child's id.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from tests.support.workers import WorkerProcess, worker_env

from tests.support.crash_sagas import applied, calls
from tests.support.interfaces import wait_until
from workflows import get_saga, start_saga, wait_for
from workflows.core.definition import child_id
from workflows.operations.actions import cancel


def effects(redis_client, saga_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.decode() for e in redis_client.lrange(f"effects:{saga_id}", 0, -1)]


def at(view, type_: str, step: str | None = None):  # type: ignore[no-untyped-def]
    [event] = [e for e in view.events if e.type == type_ and e.step == step]
    return event.at


@pytest.mark.usefixtures("running_worker")
def test_a_child_saga_whose_parent_fails_later_is_compensated_through_its_own_compensations(redis_client):  # type: ignore[no-untyped-def]
    # Given a parent whose step c, after its child completed, fails for good
    saga_id = start_saga("tests.with_child", {"behaviour": {"c": {"fail": "permanent"}}})
    parent = wait_for(saga_id, timeout=60)
    kid_id = child_id(saga_id, "kid")
    kid = get_saga(kid_id)

    # Then the child ran as a run of its own (its messages carried its id), completed, and was
    # compensated by its own compensations, newest first; then the parent undid a
    assert parent.state == "COMPENSATED" and kid.state == "COMPENSATED"
    assert effects(redis_client, kid_id) == ["action:k1:1", "action:k2:1", "compensation:k2:1",
                                             "compensation:k1:1"]
    assert effects(redis_client, saga_id) == ["action:a:1", "action:c:1", "compensation:a:1"]
    assert parent.step("kid").status == "COMPENSATED" and parent.step("c").status == "FAILED"
    assert at(kid, "SagaCompleted") < at(kid, "SagaCompensationOrdered") <= at(kid, "SagaCompensated")
    assert at(kid, "SagaCompensated") <= at(parent, "StepCompensated", "kid") <= at(parent, "StepCompensated", "a")
    # the tree, from both ends
    assert (kid.parent_id, kid.parent_step) == (saga_id, "kid")
    assert [(c.id, c.state) for c in parent.children] == [(kid_id, "COMPENSATED")]


@pytest.mark.usefixtures("running_worker")
def test_a_completed_child_gives_its_results_to_the_parent(redis_client):  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.with_child", {})
    parent = wait_for(saga_id, timeout=60)

    assert parent.state == "COMPLETED"
    kid_id = child_id(saga_id, "kid")
    assert set(parent.step("kid").result or {}) == {"k1", "k2"}
    assert parent.step("kid").result["k2"]["key"] == f"{kid_id}-k2"  # type: ignore[index]
    assert parent.step("c").result["saw"] == ["a", "kid"]  # type: ignore[index]
    assert get_saga(kid_id).input == {"behaviour": {}, "from_a": "a"}


@pytest.mark.usefixtures("running_worker")
def test_cancelling_a_parent_cancels_its_running_child_and_waits_for_it(redis_client):  # type: ignore[no-untyped-def]
    # Given a parent whose child is running k1, a slow step
    saga_id = start_saga("tests.with_child", {"kid_behaviour": {"k1": {"sleep": 2}}})
    kid_id = child_id(saga_id, "kid")
    wait_until(lambda: effects(redis_client, kid_id) == ["action:k1:1"], 30, "the child never started k1")

    # When an operator cancels the parent
    view = cancel(saga_id, reason="customer asked", who="ada")

    # Then the child is cancelled with it; the parent waits for the child before undoing a
    assert view.state == "COMPENSATING" and view.step("kid").status == "RUNNING"
    parent = wait_for(saga_id, timeout=60)
    kid = get_saga(kid_id)
    assert parent.state == "COMPENSATED" and kid.state == "COMPENSATED"
    assert kid.step("k1").status == "COMPENSATED" and kid.step("k2").status == "PENDING"
    assert parent.step("kid").status == "FAILED" and parent.step("c").status == "PENDING"
    assert effects(redis_client, kid_id) == ["action:k1:1", "compensation:k1:1"]
    assert effects(redis_client, saga_id) == ["action:a:1", "compensation:a:1"]
    assert at(kid, "SagaCompensated") <= at(parent, "StepCompensated", "a")
    # k1's late success (it was asleep when the cancel came) is stale when it arrives: it changes nothing
    wait_until(lambda: [e for e in get_saga(kid_id).events if e.type == "StaleMessageIgnored" and e.step == "k1"],
               30, "k1's late report never arrived")
    assert get_saga(kid_id).state == "COMPENSATED" and get_saga(kid_id).step("k1").result is None


@pytest.fixture(params=[False, True], ids=["published", "inline"])
def crash_worker(app, request) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    """A worker on the crash queue whose pool process dies right after committing step k_last;
    with inline steps off (each step a message of its own) or on (k_last runs in k1's delivery).
    `.inline` says which."""
    w = WorkerProcess(f"crash-kid-{uuid.uuid4().hex[:6]}", "crash", 1,
                      env=worker_env(SAGA_EXTRA_MODULES="tests.support.sagas,tests.support.crash_sagas",
                                     SAGA_REDIS_VISIBILITY_TIMEOUT="5", SAGA_REDIS_VISIBILITY_CHECK="0",
                                         SAGA_TEST_CRASH_AFTER_COMMIT="k_last",
                                     SAGA_INLINE_STEPS=str(request.param).lower()))
    w.inline = request.param  # type: ignore[attr-defined]
    try:
        w.wait_ready(app)
        yield w
    finally:
        w.kill()


def test_a_crash_right_after_the_childs_last_commit_still_finishes_the_parent(crash_worker):  # type: ignore[no-untyped-def]
    # Given a worker that dies right after committing the child's last step (the child COMPLETED),
    # before reporting to the parent
    saga_id = start_saga("crash.with_child", {})
    kid_id = child_id(saga_id, "kid")
    parent = wait_for(saga_id, timeout=60)
    kid = get_saga(kid_id)

    # Then the redelivered message found its own commit and delivered the report; the parent went on.
    # The message redelivered is the one being handled when the process died: k_last's own, or,
    # with inline steps, k1's (k1 and k_last share the crash queue: k_last ran in k1's delivery)
    assert kid.state == "COMPLETED" and parent.state == "COMPLETED", parent.failure_reason
    handled = "k1" if crash_worker.inline else "k_last"
    assert [e.detail["by"] for e in kid.events if e.type == "FollowUpRepublished"] == [kid.step(handled).task_id]
    assert [e.detail["by"] for e in parent.events if e.type == "StepSucceeded" and e.step == "kid"] == [
        f"saga:{kid_id}"]
    # nothing ran twice
    assert calls(kid_id) == ["action:k1:1", "action:k_last:1"]
    assert calls(saga_id) == ["action:a:1", "action:c:1"]
    assert [applied(kid_id, s) for s in ("k1", "k_last")] == [1, 1]


@pytest.mark.usefixtures("running_worker")
def test_the_api_and_sagas_status_show_the_tree():  # type: ignore[no-untyped-def]
    from click.testing import CliRunner
    from fastapi.testclient import TestClient

    from workflows.interfaces.api import create_app
    from workflows.interfaces.cli import main
    from workflows.runtime.settings import get_settings

    saga_id = start_saga("tests.with_child", {})
    assert wait_for(saga_id, timeout=60).state == "COMPLETED"
    kid_id = child_id(saga_id, "kid")
    settings = get_settings().model_copy(update={"api_token": "t0ken"})
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t0ken"}) as client:
        parent = client.get(f"/api/sagas/{saga_id}").json()
        kid = client.get(f"/api/sagas/{kid_id}/status").json()
        brief = client.get(f"/api/sagas/{saga_id}/status").json()
    assert [(c["id"], c["state"], c["parent_step"]) for c in parent["children"]] == [(kid_id, "COMPLETED", "kid")]
    assert parent["parent_id"] is None and parent["steps"][1]["task_id"] == kid_id
    assert (kid["parent_id"], kid["parent_step"], kid["children"]) == (saga_id, "kid", [])
    assert [c["id"] for c in brief["children"]] == [kid_id]

    # a first-stage child's input is checked at the parent's door: 422, nothing written
    from tests.support.interfaces import saga_count

    before = saga_count()
    with TestClient(create_app(settings), headers={"Authorization": "Bearer t0ken"}) as client:
        refused = client.post("/api/sagas/tests.ship_first", json={"order_id": "o-1"})
    assert refused.status_code == 422 and "customer_id" in refused.json()["message"]
    assert saga_count() == before

    shown = CliRunner().invoke(main, ["status", saga_id])
    assert shown.exit_code == 0 and f"child  kid: saga {kid_id}  tests.kid  COMPLETED" in shown.stdout
    shown = CliRunner().invoke(main, ["status", kid_id])
    assert shown.exit_code == 0 and f"child of saga {saga_id}, its step 'kid'" in shown.stdout
    as_json = CliRunner().invoke(main, ["status", kid_id, "--json"])
    assert json.loads(as_json.stdout)["parent_id"] == saga_id
