"""Versioned saga definitions, in process: the registry, fingerprints, runs pinned to their version,
hand-on of a step this process does not hold, parking and the sweeper, heartbeats, migration.

A real store (SQLite in a temporary folder) and the real decision loop with a `RecordingDispatcher`;
the clock is the test's. "A worker without version 1" is this process with version 1 unregistered
(`registry.unregister`), put back after the test. The same paths with real workers holding
different code are in tests/servers/test_versions_workers.py.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from workflows.testing import Clock

from workflows import PermanentError, RetryPolicy, Saga, Step, StepContext, registry, start_saga, step_task
from workflows.core.definition import SagaRegistry
from workflows.core.engine import decide, new_run
from workflows.core.errors import (DefinitionError, IncompatibleVersion, InvalidOperation, UnknownSagaVersion,
                                   VersionConflict)
from workflows.core.state import IdSource, Started
from workflows.core.steps import step_tasks
from workflows.interfaces.metrics import saga_registry
from workflows.operations.actions import resume, retry_step
from workflows.operations.sweeper import sweep
from workflows.operations.versions import announce, check_definitions, migrate, version_report
from workflows.orchestration.step_task import MAX_HANDOFFS, Delivery, HandOn, handle_step
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import RecordingDispatcher, Sent
from workflows.runtime.settings import Settings
from workflows.store.base import RecordedDefinition

calls: list[str] = []
"""'<task>:<kind>:<step>:v<saga version>' for every call of the step functions below."""
switched_off: set[str] = set()


def behave(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    calls.append(f"{ctx.kind}:{ctx.step}")
    b = data.get("behaviour" if ctx.kind == "action" else "compensation_behaviour", {}).get(ctx.step, {})
    if b.get("fail") == "permanent":
        raise PermanentError(f"{ctx.step} refuses")
    if b.get("switch") and ctx.step in switched_off:
        raise ConnectionError(f"{ctx.step} is switched off")
    return {"step": ctx.step}


def undo_v2_fn(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    calls.append(f"v2-compensation:{ctx.step}")
    return {}


act = step_task("vers.act", queue="vers")(behave)
undo = step_task("vers.undo", queue="vers")(behave)
undo_v2 = step_task("vers.undo_v2", queue="vers")(undo_v2_fn)
ONCE = RetryPolicy(max_attempts=1)
PATIENT = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff=1.0, max_interval=1.0, jitter=False)

NAME = "inproc.versioned"


def v1() -> Saga:
    return Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=undo, retry=ONCE, compensation_retry=ONCE, timeout=30),
        Step("charge", action=act, compensation=undo, retry=ONCE, compensation_retry=ONCE, timeout=30),
        Step("ship", action=act, compensation=None, retry=ONCE, timeout=30),
    ])


def v2() -> Saga:
    """v1 with a more patient compensation policy and ship's compensation declared: compatible
    with a v1 run that has not shipped."""
    return Saga(NAME, version=2, steps=[
        Step("reserve", action=act, compensation=undo, retry=ONCE, compensation_retry=PATIENT, timeout=30),
        Step("charge", action=act, compensation=undo, retry=ONCE, compensation_retry=PATIENT, timeout=30),
        Step("ship", action=act, compensation=undo_v2, retry=ONCE, timeout=30),
    ])


def v3() -> Saga:
    """A fraud check before the charge, and charge's compensation renamed: not compatible."""
    return Saga(NAME, version=3, steps=[
        Step("reserve", action=act, compensation=undo, timeout=30),
        Step("fraud_check", action=act, compensation=None, timeout=30),
        Step("charge", action=act, compensation=undo_v2, timeout=30),
        Step("ship", action=act, compensation=None, timeout=30),
    ])


for make in (v1, v2, v3):
    registry.register(make())


@pytest.fixture
def saga_ids() -> IdSource:
    counter = itertools.count(1)
    return lambda: f"{next(counter):08x}{'0' * 24}"


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()
    switched_off.clear()


@pytest.fixture
def without() -> Iterator[Any]:
    """`without(version)`: this process no longer holds that version of NAME (restored after)."""
    taken: list[Saga] = []

    def take(version: int) -> None:
        taken.append(registry.unregister(NAME, version))

    yield take
    for saga in taken:
        registry.register(saga)


def sent(rt: Runtime) -> list[Sent]:
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    return rt.dispatcher.take()


def deliver(rt: Runtime, m: Sent) -> Any:
    assert m.task and m.saga_id and m.step and m.task_id
    st = step_tasks.get(m.task)
    assert st is not None
    return handle_step(rt, st, m.saga_id, m.step, Delivery(m.task_id, kwargs=m.kwargs), **m.kwargs)


def drain(rt: Runtime, clock: Clock, rounds: int = 30) -> None:
    """Deliver everything sent (and every Celery retry once due) until nothing is left."""
    waiting: list[Sent] = []
    for _ in range(rounds):
        ready = [m for m in sent(rt) if m.kind == "step"] + waiting
        waiting = []
        if not ready:
            return
        for m in ready:
            out = deliver(rt, m)
            if out is not None and not isinstance(out, HandOn):
                waiting.append(Sent("step", m.saga_id, m.step, m.task, m.task_id, out.args, out.kwargs))
        clock.advance(2)
    raise AssertionError("did not settle")


# ------------------------------------------------------------------ the registry and fingerprints


def test_several_versions_are_registered_at_once_and_the_newest_is_the_default() -> None:
    assert registry.versions(NAME) == [1, 2, 3]
    assert registry.get(NAME).version == 3
    assert registry.get(NAME, 1).version == 1
    with pytest.raises(UnknownSagaVersion, match="has no version 7 in this process \\(it has: 1, 2, 3\\)"):
        registry.get(NAME, 7)


def test_the_same_shape_registered_again_is_the_one_registered() -> None:
    # Given a module imported twice: new objects, the same shape
    again = registry.register(v1())
    assert again is registry.get(NAME, 1)
    assert v1().fingerprint == registry.get(NAME, 1).fingerprint
    # retry policies are not the shape: v2 differs from v1 in them and in one compensation
    assert v1().fingerprint != v2().fingerprint


@pytest.mark.parametrize("changed, said", [
    (lambda: Saga(NAME, version=1, steps=[
        Step("charge", action=act, compensation=undo), Step("reserve", action=act, compensation=undo),
        Step("ship", action=act, compensation=None)]),
     "steps reordered: ['reserve', 'charge', 'ship'] became ['charge', 'reserve', 'ship']"),
    (lambda: Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=undo), Step("charge", action=act, compensation=undo_v2),
        Step("ship", action=act, compensation=None)]),
     "step 'charge': compensation 'vers.undo' became 'vers.undo_v2'"),
    (lambda: Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=undo), Step("fraud_check", action=act, compensation=None),
        Step("charge", action=act, compensation=undo), Step("ship", action=act, compensation=None)]),
     "steps added: ['fraud_check']"),
])
def test_a_changed_shape_under_a_registered_version_is_refused_saying_what_changed(changed: Any, said: str) -> None:
    fresh = SagaRegistry()
    fresh.register(v1())
    with pytest.raises(VersionConflict) as e:
        fresh.register(changed())
    assert said in str(e.value)
    assert f"Saga({NAME!r}, version=2, ...)" in str(e.value)
    assert fresh.get(NAME, 1).fingerprint == v1().fingerprint  # the registered one is unchanged


def test_groups_and_fan_outs_are_part_of_the_shape() -> None:
    from workflows import ForEach, Parallel
    from workflows.core.shape import describe_changes

    line = Saga("shape", steps=[Step("a", action=act, compensation=undo), Step("b", action=act, compensation=undo)])
    grouped = Saga("shape", steps=[Parallel("both", [Step("a", action=act, compensation=undo),
                                                     Step("b", action=act, compensation=undo)])])
    fan = Saga("shape", steps=[ForEach(Step("a", action=act, compensation=undo), items=lambda d: d["x"],
                                       max_items=5)])
    wider = Saga("shape", steps=[ForEach(Step("a", action=act, compensation=undo), items=lambda d: d["x"],
                                         max_items=9)])
    assert len({line.fingerprint, grouped.fingerprint, fan.fingerprint, wider.fingerprint}) == 4
    assert "step 'a': was in no group, is in parallel group 'both'" in describe_changes(line.shape, grouped.shape)
    assert describe_changes(fan.shape, wider.shape) == ["the groups or fan-out bounds differ"]


def test_the_same_shape_with_other_policies_twice_in_one_process_is_refused() -> None:
    fresh = SagaRegistry()
    fresh.register(v1())
    tuned = Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=undo, retry=PATIENT, compensation_retry=ONCE, timeout=30),
        Step("charge", action=act, compensation=undo, retry=ONCE, compensation_retry=ONCE, timeout=30),
        Step("ship", action=act, compensation=None, retry=ONCE, timeout=30)])
    assert tuned.fingerprint == v1().fingerprint  # policies may be tuned between deploys
    with pytest.raises(DefinitionError, match="same shape but other retry policies"):
        fresh.register(tuned)  # but one process holds one definition per version


def test_a_shape_recorded_by_another_worker_is_checked_when_a_worker_starts(rt: Runtime, without: Any) -> None:
    # Given the database records version 1 of NAME with the shape a worker held last week
    old = Saga(NAME, version=1, steps=[Step("reserve", action=act, compensation=undo),
                                       Step("ship", action=act, compensation=None)])
    rt.store.record_definitions([RecordedDefinition(NAME, 1, old.fingerprint, old.shape)], rt.clock())
    # When this process (another shape under version 1) checks its definitions, as a worker does on start
    with pytest.raises(VersionConflict, match="recorded in the database with another shape \\(steps added: "
                                              "\\['charge'\\]\\)"):
        check_definitions(rt)
    # and the record is unchanged
    assert {(d.saga_type, d.saga_version): d.fingerprint for d in rt.store.recorded_definitions()}[(NAME, 1)] \
        == old.fingerprint


# ------------------------------------------------------------------ runs pinned to their version


def test_a_run_records_its_version_and_the_engine_decides_only_on_that_version(rt: Runtime) -> None:
    newest = start_saga(NAME, {})
    pinned = start_saga(NAME, {}, version=1)
    assert rt.store.load(newest).saga_version == 3 and rt.store.get(newest).saga_version == 3
    assert rt.store.load(pinned).saga_version == 1
    assert [m.kwargs["saga_version"] for m in sent(rt)] == [3, 1]
    with pytest.raises(ValueError, match="is on version 1 of 'inproc.versioned', not 2"):
        decide(v2(), new_run(v1(), "x", {}, "start"), Started(), rt.clock(), lambda: "0" * 32)


def test_a_v1_run_finishes_on_v1_while_new_runs_start_on_v2(rt: Runtime, clock: Clock, without: Any) -> None:
    without(3)
    old = start_saga(NAME, {"behaviour": {"ship": {"fail": "permanent"}}}, version=1)
    new = start_saga(NAME, {"behaviour": {"ship": {"fail": "permanent"}}})
    drain(rt, clock)
    # both compensated; the v1 run's history has no v2 compensation (ship has none in v1, and it
    # failed anyway), the runs stayed on their versions
    a, b = rt.store.get(old), rt.store.get(new)
    assert (a.state, a.saga_version, b.state, b.saga_version) == ("COMPENSATED", 1, "COMPENSATED", 2)
    assert "v2-compensation:ship" not in calls


def test_a_step_of_a_version_this_worker_lacks_is_handed_on_never_run_never_dead_lettered(
        rt: Runtime, clock: Clock, without: Any) -> None:
    saga_id = start_saga(NAME, {}, version=1)
    first = sent(rt)[0]
    without(1)  # a worker deployed with versions 2 and 3 only
    out = deliver(rt, first)
    assert isinstance(out, HandOn) and out.kwargs["handoffs"] == 1 and out.countdown > 0
    assert out.args == [saga_id, "reserve"] and out.kwargs["saga_version"] == 1
    view = rt.store.get(saga_id)
    assert calls == [] and view.dead_letters == [] and rt.store.dead_letters(status=None) == []
    assert view.step("reserve").status == "RUNNING" and view.event_types().count("StepHandedOn") == 1
    # handed on again and again: no more history rows, until it is parked
    m = first
    for n in range(1, MAX_HANDOFFS + 1):
        m = Sent("step", saga_id, "reserve", m.task, m.task_id, out.args, out.kwargs)
        out = deliver(rt, m)
        if n < MAX_HANDOFFS:
            assert isinstance(out, HandOn) and out.kwargs["handoffs"] == n + 1
    assert out is None
    view = rt.store.get(saga_id)
    assert view.event_types().count("StepHandedOn") == 1 and view.event_types().count("StepParked") == 1
    assert calls == [] and rt.store.dead_letters(status=None) == []


def test_the_sweeper_leaves_a_version_no_live_worker_holds_and_redispatches_a_parked_step_once_one_does(
        rt: Runtime, clock: Clock, without: Any) -> None:
    saga_id = start_saga(NAME, {}, version=1)
    m = sent(rt)[0]
    without(1)
    announce(rt, "v2-worker:1")  # the only live worker holds 2 and 3
    kwargs = {**m.kwargs, "handoffs": MAX_HANDOFFS}
    assert deliver(rt, Sent("step", saga_id, "reserve", m.task, m.task_id, m.args, kwargs)) is None  # parked
    assert [(p.saga_id, p.task_id, p.saga_version) for p in rt.store.parked_steps()] == [(saga_id, m.task_id, 1)]
    # a duplicate of the message parked again changes nothing
    assert deliver(rt, Sent("step", saga_id, "reserve", m.task, m.task_id, m.args, kwargs)) is None
    assert len(rt.store.parked_steps()) == 1 and rt.store.get(saga_id).event_types().count("StepParked") == 1
    # When the step's deadline passed, the sweeper does not time it out: no live worker holds v1
    clock.advance(31 + 2)
    announce(rt, "v2-worker:1")
    report = sweep(rt)
    assert report.unheld == [f"{NAME}:v1"] and report.timed_out == [] and report.parked_redispatched == []
    assert rt.store.load(saga_id).step("reserve").status.value == "RUNNING"
    v = next(x for x in version_report(rt) if (x.saga_type, x.saga_version) == (NAME, 1))
    assert (v.active, v.workers, v.runs) == (1, [], {"RUNNING": 1})
    metrics = saga_registry(lambda: rt.store, clock=clock)  # the heartbeats are on the test's clock
    labels = {"saga_type": NAME, "saga_version": "1"}
    assert metrics.get_sample_value("saga_version_unheld_runs", labels) == 1
    assert metrics.get_sample_value("saga_version_runs", {**labels, "state": "RUNNING"}) == 1
    # Then a worker holding v1 starts (here: this process holds v1 again and announces it)
    registry.register(v1())
    announce(rt, "v1-worker:2")
    report = sweep(rt)
    assert report.unheld == [] and report.parked_redispatched == [f"{saga_id}:reserve"] and report.timed_out == []
    assert metrics.get_sample_value("saga_version_unheld_runs", labels) == 0
    assert rt.store.parked_steps() == []
    again = [x for x in sent(rt) if x.kind == "step"]
    assert [(x.step, x.kwargs["saga_version"]) for x in again] == [("reserve", 1)] and again[0].task_id != m.task_id
    assert deliver(rt, again[0]) is None
    drain(rt, clock)
    assert rt.store.get(saga_id).state == "COMPLETED"
    assert calls == ["action:reserve", "action:charge", "action:ship"]


def test_a_parked_step_is_dispatched_again_at_the_next_sweep_before_its_deadline(
        rt: Runtime, clock: Clock, without: Any) -> None:
    saga_id = start_saga(NAME, {}, version=1)
    m = sent(rt)[0]
    without(1)
    handle = Sent("step", saga_id, "reserve", m.task, m.task_id, m.args, {**m.kwargs, "handoffs": MAX_HANDOFFS})
    assert deliver(rt, handle) is None  # parked by a worker without v1
    registry.register(v1())
    announce(rt, "v1-worker:1")
    clock.advance(5)  # far from reserve's deadline (30 s + grace)
    report = sweep(rt)
    assert report.parked_redispatched == [f"{saga_id}:reserve"] and rt.store.parked_steps() == []
    resent = [x for x in sent(rt) if x.kind == "step"]
    assert deliver(rt, resent[0]) is None and rt.store.load(saga_id).step("reserve").status.value == "SUCCEEDED"


def test_a_parked_row_whose_run_moved_on_is_forgotten(rt: Runtime, clock: Clock, without: Any) -> None:
    saga_id = start_saga(NAME, {}, version=1)
    m = sent(rt)[0]
    without(1)
    assert deliver(rt, Sent("step", saga_id, "reserve", m.task, m.task_id, m.args,
                            {**m.kwargs, "handoffs": MAX_HANDOFFS})) is None
    registry.register(v1())
    retry_step(saga_id, "reserve", reason="now", who="ada")  # dispatched again: another task id
    announce(rt, "v1-worker:1")
    report = sweep(rt)
    assert report.parked_redispatched == [] and rt.store.parked_steps() == []


def test_a_worker_heartbeat_lists_its_versions_and_ages_out(rt: Runtime, clock: Clock) -> None:
    announce(rt, "w:1")
    start_saga(NAME, {}, version=2)
    report = {(v.saga_type, v.saga_version): v for v in version_report(rt)}
    assert report[(NAME, 2)].workers == ["w:1"] and report[(NAME, 2)].runs == {"RUNNING": 1}
    assert report[(NAME, 2)].fingerprint == v2().fingerprint
    clock.advance(31)
    assert {(v.saga_type, v.saga_version): v for v in version_report(rt)}[(NAME, 2)].workers == []


# ------------------------------------------------------------------ moving a run to a newer version


def failed_v1_run(rt: Runtime, clock: Clock) -> str:
    """A v1 run FAILED: ship failed for good, charge's compensation failed (its one attempt)."""
    switched_off.add("charge")
    saga_id = start_saga(NAME, {"behaviour": {"ship": {"fail": "permanent"}},
                                "compensation_behaviour": {"charge": {"switch": True}}}, version=1)
    drain(rt, clock)
    assert rt.store.get(saga_id).state == "FAILED"
    return saga_id


def test_a_failed_run_moves_to_a_compatible_newer_version_and_resumes_on_it(rt: Runtime, clock: Clock) -> None:
    saga_id = failed_v1_run(rt, clock)
    view = migrate(saga_id, 2, reason="v2 retries the refund 5 times", who="ada")
    assert (view.state, view.saga_version) == ("FAILED", 2)
    moved = [e for e in view.events if e.type == "SagaMigrated"][0]
    assert moved.detail["from_version"] == 1 and moved.detail["to_version"] == 2
    assert (moved.detail["who"], moved.detail["reason"]) == ("ada", "v2 retries the refund 5 times")
    # resumed on v2: the compensation fails twice more and is retried (v2's policy: 5 attempts)
    resume(saga_id, reason="gateway back", who="ada")
    m = [x for x in sent(rt) if x.kind == "step"][0]
    assert m.kwargs["saga_version"] == 2
    out = deliver(rt, m)
    assert out is not None and not isinstance(out, HandOn)  # a Celery retry: v1 would have dead-lettered
    switched_off.clear()
    clock.advance(2)
    assert deliver(rt, Sent("step", saga_id, m.step, m.task, m.task_id, out.args, out.kwargs)) is None
    drain(rt, clock)
    assert rt.store.get(saga_id).state == "COMPENSATED"


def test_a_move_to_an_incompatible_version_is_refused_with_the_reason_and_recorded(rt: Runtime,
                                                                                    clock: Clock) -> None:
    saga_id = failed_v1_run(rt, clock)
    with pytest.raises(IncompatibleVersion, match="version 3 has the steps \\['reserve', 'fraud_check', 'charge', "
                                                  "'ship'\\], the run has \\['reserve', 'charge', 'ship'\\]"):
        migrate(saga_id, 3, reason="try", who="ada")
    with pytest.raises(IncompatibleVersion, match="can only move to a newer one"):
        migrate(saga_id, 1, reason="try", who="ada")
    with pytest.raises(InvalidOperation, match="no version 9"):
        migrate(saga_id, 9, reason="try", who="ada")
    view = rt.store.get(saga_id)
    assert view.saga_version == 1 and view.state == "FAILED"
    refusals = [e.detail for e in view.events if e.type == "OperatorActionRefused"]
    assert [r["action"] for r in refusals] == ["migrate"] * 3 and refusals[0]["who"] == "ada"


def test_a_run_in_flight_moves_only_if_its_started_steps_keep_their_compensation(rt: Runtime,
                                                                                    clock: Clock) -> None:
    # Given a v1 run whose ship is in flight (its message lost): ship has no compensation in v1,
    # v2 declares one, so moving it would compensate what v1 said needs none
    saga_id = start_saga(NAME, {}, version=1)
    for _ in range(2):  # reserve, then charge
        assert deliver(rt, [m for m in sent(rt) if m.kind == "step"][0]) is None
    assert [m.step for m in sent(rt)] == ["ship"]  # lost
    assert rt.store.load(saga_id).step("ship").status.value == "RUNNING"
    with pytest.raises(IncompatibleVersion, match="step 'ship' is RUNNING and its compensation would change "
                                                  "from None to 'vers.undo_v2'"):
        migrate(saga_id, 2, reason="stuck", who="ada")
    # a run whose started steps keep theirs moves, and its step in flight is dispatched again under v2
    other = start_saga(NAME, {}, version=1)
    lost = [m for m in sent(rt) if m.kind == "step"][0]
    view = migrate(other, 2, reason="v1 retired too early", who="ada")
    again = [m for m in sent(rt) if m.kind == "step"]
    assert view.saga_version == 2 and [(m.step, m.kwargs["saga_version"]) for m in again] == [("reserve", 2)]
    assert again[0].task_id != lost.task_id
    assert deliver(rt, lost) is None  # the v1 message, if it still arrives, is stale: it does not run
    assert calls == ["action:reserve", "action:charge"]
    assert deliver(rt, again[0]) is None
    drain(rt, clock)
    assert rt.store.get(other).state == "COMPLETED"
    with pytest.raises(IncompatibleVersion, match="is COMPLETED: only a RUNNING, COMPENSATING or FAILED run"):
        migrate(other, 3, reason="x")


# ------------------------------------------------------------------ the API and the CLI


def test_the_api_lists_versions_starts_a_given_version_and_moves_a_run(rt: Runtime, clock: Clock) -> None:
    from fastapi.testclient import TestClient

    from workflows.interfaces.api import create_app

    api = TestClient(create_app(Settings(database_url=rt.settings.database_url), runtime=rt))
    r = api.post(f"/api/sagas/{NAME}?version=1", json={})
    assert r.status_code == 202
    saga_id = r.json()["saga_id"]
    assert api.get(f"/api/sagas/{saga_id}/status").json()["saga_version"] == 1
    assert api.get(f"/api/sagas/{saga_id}").json()["saga_version"] == 1
    listed = {(v["saga_type"], v["saga_version"]): v for v in api.get("/api/saga-versions").json()}
    assert listed[(NAME, 1)]["runs"] == {"RUNNING": 1} and listed[(NAME, 1)]["active"] == 1
    assert listed[(NAME, 2)]["fingerprint"] == v2().fingerprint and listed[(NAME, 2)]["runs"] == {}
    # bad input is a 4xx naming the problem, never a 5xx
    assert api.post(f"/api/sagas/{NAME}?version=0", json={}).status_code == 422
    r = api.post(f"/api/sagas/{NAME}?version=9", json={})
    assert r.status_code == 404 and "has no version 9" in r.json()["message"]
    assert api.post(f"/api/sagas/{saga_id}/move", json={"to_version": "two"}).status_code == 422
    assert api.post(f"/api/sagas/{saga_id}/move", json={"to_version": 2}).status_code == 422  # no reason
    r = api.post(f"/api/sagas/{saga_id}/move", json={"to_version": 3, "reason": "x"}, headers={"X-Operator": "ada"})
    assert r.status_code == 409 and "version 3 has the steps" in r.json()["message"]
    r = api.post(f"/api/sagas/{saga_id}/move", json={"to_version": 2, "reason": "v1 retired"},
                 headers={"X-Operator": "ada"})
    assert r.status_code == 200 and r.json()["saga_version"] == 2


def test_sagas_versions_and_sagas_move_on_the_command_line(rt: Runtime, clock: Clock,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from workflows.interfaces import cli

    monkeypatch.setattr(cli, "_runtime", lambda: rt)
    saga_id = start_saga(NAME, {}, version=1)
    runner = CliRunner()
    out = runner.invoke(cli.main, ["versions", "--json"])
    assert out.exit_code == 0, out.output
    rows = {(v["saga_type"], v["saga_version"]): v for v in json.loads(out.output)}
    assert rows[(NAME, 1)]["active"] == 1 and rows[(NAME, 1)]["fingerprint"] == v1().fingerprint
    out = runner.invoke(cli.main, ["versions"])
    assert out.exit_code == 0 and NAME in out.output and v1().fingerprint in out.output
    out = runner.invoke(cli.main, ["--who", "ada", "move", saga_id, "--to-version", "3", "--reason", "x"])
    assert out.exit_code == 1 and "version 3 has the steps" in out.output
    out = runner.invoke(cli.main, ["--who", "ada", "move", saga_id, "--to-version", "2", "--reason", "retire v1"])
    assert out.exit_code == 0 and "moved to version 2" in out.output, out.output
    out = runner.invoke(cli.main, ["status", saga_id])
    assert "saga version 2" in out.output and "SagaMigrated" in out.output


def test_a_saga_no_live_worker_announces_is_swept_as_before(rt: Runtime, clock: Clock) -> None:
    # Given live workers that announce other sagas only (workers of this saga predate heartbeats)
    rt.store.announce_worker("other:1", {"shop.checkout": {"1": "abc"}}, rt.clock())
    saga_id = start_saga(NAME, {}, version=1)
    sent(rt)  # its message is lost
    clock.advance(31 + 2)
    rt.store.announce_worker("other:1", {"shop.checkout": {"1": "abc"}}, rt.clock())
    # Then the sweeper acts on the lost first step as it always did
    report = sweep(rt)
    assert report.unheld == [] and report.redispatched == [f"{saga_id}:reserve"]
