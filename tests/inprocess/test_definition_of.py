"""Which definition decides a run: its own type and version (`definition_of`), never the newest
registered. In process: a real store (SQLite in a temporary folder), the real decision loop and
sweeper, a recording dispatcher whose messages the test delivers, the test's clock.

Every saga here has a version 2 registered beside version 1, with another shape; the runs are
started on version 1 (`start_saga(..., version=1)`) and must be driven to their end by it: a
signal, a child's report, the recovery of a child after a lost publish, the console's drawing of
the run, and the install-time visibility check each look at the run's own version.
"""
from __future__ import annotations

from typing import Any

import pytest

from workflows.testing import Clock, Worker
from workflows import (Parallel, RetryPolicy, Saga, Step, StepContext, Wait, get_saga, registry, signal, start_saga,
                       step_task)
from workflows.core.definition import Child, SagaRegistry, child_id
from workflows.core.engine import new_run
from workflows.core.errors import DefinitionError, VisibilityTimeoutTooShort
from workflows.core.steps import step_tasks
from workflows.operations.sweeper import sweep
from workflows.orchestration.step_task import Delivery, handle_step
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import Sent
from workflows.runtime.settings import Settings

calls: list[str] = []


def behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    calls.append(f"{ctx.kind}:{ctx.step}")
    return {"step": ctx.step}


act = step_task("defof.act", queue="defof")(behave)
undo = step_task("defof.undo", queue="defof")(behave)
act_v2 = step_task("defof.act_v2", queue="defof")(behave)
ONCE = RetryPolicy(max_attempts=1)


def step(name: str, action: Any = act) -> Step:
    return Step(name, action=action, compensation=undo, retry=ONCE, compensation_retry=ONCE, timeout=30)


APPROVAL = "defof.approval"
APPROVAL_V1 = Saga(APPROVAL, version=1, steps=[
    step("a"), Parallel("pair", [step("b"), step("c")]), Wait("approve", signal="go", timeout=3600), step("d")])
APPROVAL_V2 = Saga(APPROVAL, version=2, steps=[  # no group any more, one more step at the end
    step("a"), step("b"), step("c"), Wait("approve", signal="go", timeout=3600), step("d"), step("e")])

KID_V1 = Saga("defof.kid", version=1, steps=[step("k1"), step("k2")])
KID_V2 = Saga("defof.kid", version=2, steps=[step("k1", action=act_v2), step("k2")])  # k1 runs another task
PARENT = "defof.parent"
PARENT_V1 = Saga(PARENT, version=1, steps=[step("a"), Child("kid", saga=KID_V1), step("b")])
PARENT_V2 = Saga(PARENT, version=2, steps=[step("a"), Child("kid", saga=KID_V1), step("b"), step("c")])

for _saga in (APPROVAL_V1, APPROVAL_V2, PARENT_V1, KID_V2, PARENT_V2):
    registry.register(_saga)


@pytest.fixture
def saga_settings(saga_settings: dict[str, Any]) -> dict[str, Any]:
    return saga_settings | {"inline_steps": False}  # every step a message of its own: the tests deliver them one by one


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()


def waiting_v1_run(worker: Worker) -> str:
    saga_id = start_saga(APPROVAL, {}, version=1)
    worker.drain()
    assert get_saga(saga_id).state == "WAITING" and get_saga(saga_id).saga_version == 1
    return saga_id


# ------------------------------------------------------------------ signals


def test_a_signal_to_a_v1_run_is_decided_by_version_1_with_version_2_registered(rt: Runtime, worker: Worker) -> None:
    # Given a run of version 1 parked on its wait, and version 2 registered in this process
    saga_id = waiting_v1_run(worker)
    # When the signal comes
    sent = signal(saga_id, "go", {}, idempotency_key="go-1", who="ada")
    worker.drain()
    # Then version 1 takes it and finishes the run: no step of version 2 ("e") is run
    assert not sent.duplicate and get_saga(saga_id).state == "COMPLETED"
    assert calls == ["action:a", "action:b", "action:c", "action:d"]
    assert [s.name for s in get_saga(saga_id).steps] == ["a", "b", "c", "approve", "d"]


def test_a_signal_to_a_v1_run_over_the_api_is_accepted_not_a_500(rt: Runtime, worker: Worker) -> None:
    from fastapi.testclient import TestClient

    from workflows.interfaces.api import create_app

    saga_id = waiting_v1_run(worker)
    api = TestClient(create_app(Settings(database_url=rt.settings.database_url), runtime=rt),
                     raise_server_exceptions=False)
    r = api.post(f"/api/sagas/{saga_id}/signals/go", json={}, headers={"Idempotency-Key": "go-api"})
    assert 200 <= r.status_code < 300, (r.status_code, r.text)
    worker.drain()
    assert get_saga(saga_id).state == "COMPLETED"


# ------------------------------------------------------------------ children


def test_a_v1_parent_hears_its_child_finish_after_version_2_is_registered(rt: Runtime, worker: Worker,
                                                                          clock: Clock) -> None:
    # Given a parent on version 1 (version 2 registered) whose child runs
    saga_id = start_saga(PARENT, {}, version=1)
    worker.drain()
    # Then the child's report reaches the parent at once, and the parent completes on version 1
    parent = get_saga(saga_id)
    assert parent.state == "COMPLETED", [(e.type, e.step) for e in parent.events]
    assert [s.name for s in parent.steps] == ["a", "kid", "b"]
    assert get_saga(child_id(saga_id, "kid")).state == "COMPLETED"
    # and a sweep owes it nothing
    for _ in range(2):
        clock.advance(3 * 3600)
        assert sweep(rt).children == []


def deliver(rt: Runtime, m: Sent, *, redelivered: bool = False) -> None:
    assert m.task and m.saga_id and m.step and m.task_id
    st = step_tasks.get(m.task)
    assert st is not None
    handle_step(rt, st, m.saga_id, m.step, Delivery(m.task_id, redelivered, 0, m.kwargs), **m.kwargs)


def test_a_child_on_an_older_version_is_recovered_with_its_own_definition(rt: Runtime, worker: Worker) -> None:
    # Given a parent whose step `a` started the child (version 1 of defof.kid, version 2 registered)
    # and whose publish was lost: the worker died between its commit and the child's first message
    saga_id = start_saga(PARENT, {}, version=1)
    [first] = rt.dispatcher.take()  # type: ignore[attr-defined]
    deliver(rt, first)
    lost = rt.dispatcher.take()  # type: ignore[attr-defined]
    kid = child_id(saga_id, "kid")
    assert [(m.saga_id, m.step, m.task) for m in lost] == [(kid, "k1", "defof.act")]
    assert rt.store.load(kid).saga_version == 1
    # When the same message comes back (redelivered): its own commit is found, the child recovered
    deliver(rt, first, redelivered=True)
    again = rt.dispatcher.take()  # type: ignore[attr-defined]
    # Then the child's first message is the one of its own version: k1's v1 task, not v2's
    assert [(m.saga_id, m.step, m.task) for m in again] == [(kid, "k1", "defof.act")]
    for m in again:
        worker.deliver(m)
    worker.drain()
    assert get_saga(saga_id).state == "COMPLETED" and "action:k1" in calls


# ------------------------------------------------------------------ the console and install


def test_the_console_draws_an_older_run_with_its_own_groups(rt: Runtime, worker: Worker) -> None:
    from fastapi.testclient import TestClient

    from workflows.interfaces.api import create_app

    saga_id = waiting_v1_run(worker)
    console = TestClient(create_app(Settings(database_url=rt.settings.database_url, api_token=None,
                                             console_open=True), runtime=rt))
    page = console.get(f"/console/sagas/{saga_id}")
    assert page.status_code == 200
    # version 1 has the group "pair" (version 2 has none): the timeline labels its steps with it
    assert "b · group pair" in page.text and "c · group pair" in page.text


def test_the_install_time_visibility_check_covers_every_registered_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from celery import Celery

    install_module = importlib.import_module("workflows.install")  # the package's `install` is the function

    slow = RetryPolicy(max_attempts=3, initial_interval=5000.0, backoff=2.0, max_interval=5000.0, jitter=False)
    old = Saga("defof.visible", version=1, steps=[Step("s", action=act, compensation=None, retry=slow)])
    new = Saga("defof.visible", version=2, steps=[Step("s", action=act, compensation=None, retry=ONCE)])
    private = SagaRegistry()
    private.register(old)
    private.register(new)
    monkeypatch.setattr(install_module, "registry", private)
    app = Celery("defof", broker="redis://127.0.0.1:1/0")
    app.conf.broker_transport_options = {"visibility_timeout": 3600}
    # version 1's retry countdown (5000 s) outlives the timeout: refused, though version 2 is fine
    with pytest.raises(VisibilityTimeoutTooShort, match="defof.visible"):
        install_module._check_visibility_timeout(app, Settings(redis_visibility_check=True))


def test_a_named_child_starts_on_the_version_its_node_declares_else_the_newest() -> None:
    assert registry.child_definition(Child("kid", saga="defof.kid", version=1)) is registry.get("defof.kid", 1)
    assert registry.child_definition(Child("kid", saga="defof.kid")).version == 2  # a new run: the newest
    assert registry.child_definition(Child("kid", saga=KID_V1)) is KID_V1
    with pytest.raises(DefinitionError, match="version 2 is not the version of the Saga given"):
        Child("kid", saga=KID_V1, version=2)
    # a run's own version, never the newest
    run = new_run(KID_V1, "kid-1", {}, "start")
    assert registry.definition_of(run) is registry.get("defof.kid", 1) and registry.newest("defof.kid") is KID_V2
