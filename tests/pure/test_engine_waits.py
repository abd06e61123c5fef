"""The pure engine's waits and signals: a run parks on a `Wait`, a signal or its deadline moves it on.

No broker, no database, no clock: `now=` moves time. A signal before, during and after its wait;
duplicates; a timeout racing a signal (exactly one wins); a reject compensating exactly the
completed steps; a saga deadline compensating a parked run and a parallel group; scheduled starts.
A property test runs random sagas with waits under random signals, timeouts and cancels.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from workflows import Parallel, Saga, Step
from workflows.core.definition import Node, Wait
from workflows.core.engine import command_for, decide, new_run
from workflows.core.errors import DefinitionError, InvalidInput
from workflows.core.state import (ActionSucceeded, Cancel, CompensationSucceeded, Ignored, Outcome, Resume, RunState,
                                  RunStatus, Schedule, Signal, SignalReceived, Started, StepStatus, Transition,
                                  WaitTimedOut)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
DAY = timedelta(days=1)


class Approval(BaseModel):
    approved: bool
    reason: str = ""


def ids() -> Any:
    n = 0

    def next_id() -> str:
        nonlocal n
        n += 1
        return f"{n:032x}"
    return next_id


IDS = ids()

ORDER = Saga("order_with_approval", steps=[
    Step("reserve", action="svc.reserve", compensation="svc.release"),
    Step("charge", action="svc.charge", compensation="svc.refund"),
    Wait("manager_approval", signal="approval", timeout=timedelta(days=2), model=Approval,
         approve=lambda p: p["approved"]),
    Step("ship", action="svc.ship", compensation="svc.cancel_shipment"),
])


def signal(name: str = "approval", key: str = "k1", who: str = "alice", **payload: Any) -> SignalReceived:
    return SignalReceived(Signal(id=f"sig-{key}", name=name, payload=payload or {"approved": True}, idempotency_key=key,
                                 who=who, received_at=NOW))


def step(saga: Saga, run: RunState, outcome: Outcome, at: datetime = NOW) -> Transition:
    return decide(saga, run, outcome, at, IDS)


def play(saga: Saga, *outcomes: Outcome, at: datetime = NOW) -> RunState:
    run = new_run(saga, "r1", {}, caused_by="start")
    for o in outcomes:
        run = step(saga, run, o, at).after
    return run


def parked() -> RunState:
    return play(ORDER, Started(), ActionSucceeded("reserve", {"r": 1}), ActionSucceeded("charge", {"c": 1}))


def statuses(run: RunState) -> dict[str, str]:
    return {s.name: s.status.value for s in run.steps}


# ------------------------------------------------------------------ declaration


def test_a_wait_is_declared_with_a_readable_timeout_and_checked() -> None:
    w = Wait("ok", signal="approval", timeout=timedelta(hours=1))
    assert w.timeout_seconds == 3600.0 and w.on_timeout == "compensate" and w.task_marker == "wait:approval"
    with pytest.raises(DefinitionError, match="timeout"):
        Wait("w", signal="s", timeout=0)
    with pytest.raises(DefinitionError, match="on_timeout"):
        Wait("w", signal="s", timeout=1, on_timeout="ignore")
    with pytest.raises(DefinitionError, match="signal"):
        Wait("w", signal="not a name", timeout=1)
    with pytest.raises(DefinitionError, match="unique"):
        Saga("dup", steps=[Step("w", action="a.b", compensation=None), Wait("w", signal="s", timeout=1)])


def test_the_payload_is_validated_by_the_model_and_read_by_approve() -> None:
    w = ORDER.wait("manager_approval")
    assert w is not None
    assert w.validate({"approved": "yes"}) == {"approved": True, "reason": ""}
    with pytest.raises(InvalidInput, match="approved"):
        w.validate({"approved": "perhaps"})
    assert w.approves({"approved": False}) is False
    loose = Wait("w", signal="s", timeout=1, approve=lambda p: p["ok"])
    with pytest.raises(InvalidInput, match="approve function"):
        loose.approves({})


# ------------------------------------------------------------------ parking


def test_reaching_a_wait_parks_the_run_with_its_deadline_and_no_message() -> None:
    t = step(ORDER, play(ORDER, Started(), ActionSucceeded("reserve", {})), ActionSucceeded("charge", {}))
    run = t.after
    assert run.status == RunStatus.WAITING
    w = run.step("manager_approval")
    assert w.status == StepStatus.WAITING and w.deadline_at == NOW + timedelta(days=2)
    assert w.task_id == "wait:approval"
    assert t.commands == () and command_for(ORDER, run) is None
    assert [e.type for e in t.events] == ["StepSucceeded", "WaitStarted"]


def test_an_approving_signal_goes_on_with_its_payload_as_the_wait_result() -> None:
    t = step(ORDER, parked(), signal(approved=True, reason="fine"))
    run = t.after
    assert run.status == RunStatus.RUNNING
    assert run.step("manager_approval").status == StepStatus.SUCCEEDED
    assert run.results()["manager_approval"] == {"approved": True, "reason": "fine"}
    assert t.command is not None and t.command.step == "ship"
    assert [s.consumed_by for s in t.signals] == ["manager_approval"] and t.consumed == ()
    assert [e.type for e in t.events] == ["SignalReceived", "SignalConsumed", "WaitApproved", "StepDispatched"]


def test_a_reject_compensates_exactly_the_completed_steps_with_the_rejection_as_reason() -> None:
    t = step(ORDER, parked(), signal(approved=False, reason="over budget", who="bob"))
    run = t.after
    assert run.status == RunStatus.COMPENSATING
    assert run.failure_reason == "wait 'manager_approval' rejected by bob: over budget"
    assert statuses(run) == {"reserve": "SUCCEEDED", "charge": "COMPENSATING", "manager_approval": "FAILED",
                             "ship": "PENDING"}
    run = step(ORDER, run, CompensationSucceeded("charge")).after
    t = step(ORDER, run, CompensationSucceeded("reserve"))
    assert t.after.status == RunStatus.COMPENSATED
    assert statuses(t.after) == {"reserve": "COMPENSATED", "charge": "COMPENSATED", "manager_approval": "FAILED",
                                 "ship": "PENDING"}
    assert "CompensationSkipped" not in [e.type for e in t.events]  # the wait is not a step to undo


def test_a_wait_whose_condition_is_false_for_the_input_is_skipped() -> None:
    saga = Saga("limit", steps=[Wait("approval", signal="approval", timeout=60, when=lambda d: d["total"] > 100),
                                Step("ship", action="s.ship", compensation=None)])
    small = decide(saga, new_run(saga, "r1", {"total": 50}, caused_by="start"), Started(), NOW, IDS)
    assert small.after.status == RunStatus.RUNNING and small.command is not None and small.command.step == "ship"
    assert small.after.step("approval").status == StepStatus.SUCCEEDED
    assert "WaitSkipped" in [e.type for e in small.events]
    big = decide(saga, new_run(saga, "r2", {"total": 500}, caused_by="start"), Started(), NOW, IDS)
    assert big.after.status == RunStatus.WAITING and big.commands == ()


# ------------------------------------------------------------------ before, during, after


def test_a_signal_before_its_wait_begins_is_kept_and_consumed_when_it_begins() -> None:
    run = play(ORDER, Started())
    t = step(ORDER, run, signal(approved=True))
    assert t.after.status == RunStatus.RUNNING and [s.id for s in t.after.signals] == ["sig-k1"]
    assert [s.consumed_by for s in t.signals] == [None] and t.commands == ()
    run = step(ORDER, t.after, ActionSucceeded("reserve", {})).after
    t = step(ORDER, run, ActionSucceeded("charge", {}))
    assert t.after.signals == () and [(s.id, s.consumed_by) for s in t.consumed] == [("sig-k1", "manager_approval")]
    assert t.after.status == RunStatus.RUNNING and t.command is not None and t.command.step == "ship"
    assert [e.type for e in t.events] == ["StepSucceeded", "WaitStarted", "SignalConsumed", "WaitApproved",
                                          "StepDispatched"]


def test_an_early_reject_compensates_as_soon_as_the_wait_begins() -> None:
    run = play(ORDER, Started(), signal(approved=False, reason="no"), ActionSucceeded("reserve", {}))
    t = step(ORDER, run, ActionSucceeded("charge", {}))
    assert t.after.status == RunStatus.COMPENSATING and t.command is not None and t.command.step == "charge"


def test_a_signal_before_start_of_a_scheduled_run_is_kept() -> None:
    run = play(ORDER, Schedule(NOW + DAY), signal())
    assert run.status == RunStatus.SCHEDULED and len(run.signals) == 1


def test_a_signal_after_its_wait_is_refused_and_changes_nothing() -> None:
    run = step(ORDER, parked(), signal(key="k1")).after
    with pytest.raises(Ignored, match="not waiting for signal 'approval': every wait") as e:
        step(ORDER, run, signal(key="k2"))
    assert e.value.event is not None and e.value.event.type == "SignalRefused"


def test_a_second_early_signal_for_one_wait_is_refused() -> None:
    run = play(ORDER, Started(), signal(key="k1"))
    with pytest.raises(Ignored, match="already kept"):
        step(ORDER, run, signal(key="k2"))


def test_a_duplicate_of_a_kept_signal_is_a_no_op() -> None:
    run = play(ORDER, Started(), signal(key="k1"))
    with pytest.raises(Ignored, match="already kept"):
        step(ORDER, run, signal(key="k1"))


def test_a_signal_nobody_waits_for_and_a_terminal_run_refuse() -> None:
    with pytest.raises(Ignored, match="no wait for signal 'pickup'"):
        step(ORDER, parked(), signal(name="pickup"))
    done = play(ORDER, Started(), ActionSucceeded("reserve", {}), ActionSucceeded("charge", {}), signal(),
                ActionSucceeded("ship", {}))
    assert done.status == RunStatus.COMPLETED
    with pytest.raises(Ignored, match="COMPLETED"):
        step(ORDER, done, signal(key="k9"))


# ------------------------------------------------------------------ timeouts


def test_a_wait_is_not_timed_out_before_its_deadline() -> None:
    with pytest.raises(Ignored, match="not due"):
        step(ORDER, parked(), WaitTimedOut("manager_approval"), at=NOW + DAY)


def test_a_timeout_compensates_by_default() -> None:
    t = step(ORDER, parked(), WaitTimedOut("manager_approval"), at=NOW + 2 * DAY)
    assert t.after.status == RunStatus.COMPENSATING
    assert t.after.step("manager_approval").status == StepStatus.TIMED_OUT
    assert "timed out" in (t.after.failure_reason or "")
    assert t.command is not None and (t.command.kind, t.command.step) == ("compensation", "charge")


def test_a_timeout_can_fail_to_an_operator_who_resumes_to_compensate() -> None:
    saga = Saga("fail_on_timeout", steps=[Step("a", action="s.a", compensation="s.undo"),
                                          Wait("w", signal="go", timeout=60, on_timeout="fail")])
    run = play(saga, Started(), ActionSucceeded("a", {}))
    t = step(saga, run, WaitTimedOut("w"), at=NOW + timedelta(seconds=61))
    assert t.after.status == RunStatus.FAILED and t.commands == ()
    assert "an operator must decide" in (t.after.failure_reason or "")
    t = step(saga, t.after, Resume(None, "customer gone", "ops"))
    assert t.after.status == RunStatus.COMPENSATING and t.command is not None and t.command.step == "a"


def test_a_timeout_can_go_on_with_a_default_result() -> None:
    saga = Saga("default_on_timeout", steps=[Wait("w", signal="go", timeout=60, on_timeout={"approved": True}),
                                             Step("b", action="s.b", compensation=None)])
    run = play(saga, Started())
    assert run.status == RunStatus.WAITING
    t = step(saga, run, WaitTimedOut("w"), at=NOW + timedelta(seconds=60))
    assert t.after.status == RunStatus.RUNNING and t.after.results() == {"w": {"approved": True}}
    assert t.command is not None and t.command.step == "b"


def test_a_timeout_racing_a_signal_exactly_one_wins() -> None:
    """Both are decided on the same version; the store writes only the first, the other is decided
    again on what was written and changes nothing (its refusal is what the history shows)."""
    run = parked()
    late = NOW + 3 * DAY
    by_signal = step(ORDER, run, signal(), at=late)
    by_timeout = step(ORDER, run, WaitTimedOut("manager_approval"), at=late)
    assert by_signal.before.version == by_timeout.before.version  # the version check lets one commit
    with pytest.raises(Ignored, match="WaitTimedOut"):  # the signal won: the timeout re-decided is ignored
        step(ORDER, by_signal.after, WaitTimedOut("manager_approval"), at=late)
    with pytest.raises(Ignored, match="not waiting for signal 'approval': it is COMPENSATING") as e:  # the timeout won
        step(ORDER, by_timeout.after, signal(), at=late)
    assert e.value.event is not None and e.value.event.type == "SignalRefused"


# ------------------------------------------------------------------ cancels and saga deadlines


def test_a_saga_deadline_compensates_a_parked_run() -> None:
    saga = Saga("deadline_wait", deadline=3600, steps=[
        Step("a", action="s.a", compensation="s.undo"), Wait("w", signal="go", timeout=timedelta(days=7))])
    run = play(saga, Started(), ActionSucceeded("a", {}))
    assert run.status == RunStatus.WAITING and run.deadline_at == NOW + timedelta(hours=1)
    t = step(saga, run, Cancel("saga deadline passed", who="sweeper"), at=NOW + timedelta(hours=2))
    assert t.after.status == RunStatus.COMPENSATING
    assert statuses(t.after) == {"a": "COMPENSATING", "w": "FAILED"}
    assert t.after.step("w").deadline_at is None  # the sweeper will not time it out as well
    assert "WaitCancelled" in [e.type for e in t.events]


def test_a_saga_deadline_compensates_parallel_branches_in_flight() -> None:
    saga = Saga("deadline_group", deadline=60, steps=[
        Parallel("prep", [Step("x", action="s.x", compensation="s.ux"), Step("y", action="s.y", compensation="s.uy"),
                          Step("z", action="s.z", compensation=None)])])
    run = play(saga, Started(), ActionSucceeded("x", {}))
    t = step(saga, run, Cancel("saga deadline passed", who="sweeper"), at=NOW + timedelta(seconds=61))
    assert statuses(t.after) == {"x": "COMPENSATING", "y": "COMPENSATING", "z": "TIMED_OUT"}
    assert sorted(c.step for c in t.commands) == ["x", "y"]


# ------------------------------------------------------------------ scheduled starts


def test_a_scheduled_run_waits_for_its_time_then_starts_or_is_cancelled() -> None:
    t = step(ORDER, new_run(ORDER, "r1", {}, caused_by="start"), Schedule(NOW + DAY))
    assert t.after.status == RunStatus.SCHEDULED and t.after.deadline_at == NOW + DAY and t.commands == ()
    started = step(ORDER, t.after, Started(), at=NOW + DAY)
    assert started.after.status == RunStatus.RUNNING and started.command is not None
    cancelled = step(ORDER, t.after, Cancel("not needed", who="ops"))
    assert cancelled.after.status == RunStatus.COMPENSATED and cancelled.commands == ()


# ------------------------------------------------------------------ property


@st.composite
def wait_sagas(draw: st.DrawFn) -> Saga:
    nodes: list[Node] = []
    for i in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            nodes.append(Step(f"s{i}", action="t.act", compensation="t.undo" if draw(st.booleans()) else None))
        else:
            on_timeout = draw(st.sampled_from(["compensate", "fail", "default"]))
            nodes.append(Wait(f"w{i}", signal=draw(st.sampled_from(["a", "b"])), timeout=60,
                              on_timeout={"defaulted": True} if on_timeout == "default" else on_timeout,
                              approve=lambda p: p.get("ok", True)))
    return Saga("prop_waits", steps=nodes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(saga=wait_sagas(), data=st.data())
def test_random_signals_timeouts_and_cancels_keep_the_invariants(saga: Saga, data: st.DataObject) -> None:
    """Whatever arrives in whatever order: every signal is consumed at most once, a kept one only by
    a wait of its name; a wait that timed out took no signal; only steps that succeeded (or were
    cancelled in flight) are compensated, each once, and never a wait; the run ends terminal once
    every message was answered."""
    run = step(saga, new_run(saga, "r1", {}, caused_by="start"), Started()).after
    consumed: dict[str, str] = {}
    compensated: list[str] = []
    succeeded: set[str] = set()
    timed_out: set[str] = set()
    at = NOW
    for n in range(60):
        if run.status.terminal:
            break
        in_flight = [s for s in run.steps if s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)]
        parked_waits = [s for s in run.steps if s.status == StepStatus.WAITING]
        choices = ["signal"] + (["deliver"] * 3 if in_flight else []) + (["timeout"] if parked_waits else [])
        choices += ["cancel"] if data.draw(st.integers(0, 9)) == 0 else []
        choices += ["resume"] if run.status == RunStatus.FAILED else []
        kind = data.draw(st.sampled_from(choices))
        outcome: Outcome
        if kind == "deliver":
            s = data.draw(st.sampled_from(in_flight))
            outcome = ActionSucceeded(s.name, {}) if s.status == StepStatus.RUNNING else CompensationSucceeded(s.name)
        elif kind == "signal":
            key = f"k{data.draw(st.integers(0, 5))}"
            outcome = SignalReceived(Signal(id=f"sig{n}", name=data.draw(st.sampled_from(["a", "b"])),
                                            payload={"ok": data.draw(st.booleans())}, idempotency_key=key,
                                            who="p", received_at=at))
        elif kind == "timeout":
            at += timedelta(seconds=61)
            outcome = WaitTimedOut(data.draw(st.sampled_from(parked_waits)).name)
        elif kind == "cancel":
            outcome = Cancel("random", who="p")
        else:
            outcome = Resume(None, "random", "p")
        try:
            t = decide(saga, run, outcome, at, IDS)
        except Ignored:
            continue
        for sig in (*t.signals, *t.consumed):
            if sig.consumed_by is not None:
                assert sig.id not in consumed, "a signal was consumed twice"
                wait = saga.wait(sig.consumed_by)
                assert wait is not None and wait.signal == sig.name
                consumed[sig.id] = sig.consumed_by
        for ev in t.events:
            if ev.type == "WaitTimedOut":
                assert ev.step not in consumed.values(), "a wait timed out after taking a signal"
                timed_out.add(str(ev.step))
            if ev.type == "SignalConsumed":
                assert ev.step not in timed_out
            if ev.type in ("StepSucceeded", "StepTimedOut"):  # done, or unknown (a cancel in flight)
                succeeded.add(str(ev.step))
            if ev.type == "StepCompensated":
                assert ev.step in succeeded and ev.step not in compensated, "compensated what never ran, or twice"
                compensated.append(str(ev.step))
        assert all(saga.wait(c.step) is None for c in t.commands), "a wait was sent as a task"
        assert len(run.signals) <= len(saga.steps)
        run = t.after
    if run.status == RunStatus.FAILED:
        run = decide(saga, run, Resume(None, "end", "p"), at, IDS).after
    for _ in range(30):  # answer every message still in flight: the run ends
        flying = [s for s in run.steps if s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING)]
        waiting = [s for s in run.steps if s.status == StepStatus.WAITING]
        if run.status.terminal:
            break
        if flying:
            s = flying[0]
            o: Outcome = (ActionSucceeded(s.name, {}) if s.status == StepStatus.RUNNING
                          else CompensationSucceeded(s.name))
        else:
            assert waiting, f"a {run.status.value} run with nothing in flight and no wait: stranded"
            at += timedelta(seconds=61)
            o = WaitTimedOut(waiting[0].name)
        run = decide(saga, run, o, at, IDS).after
        if run.status == RunStatus.FAILED:
            run = decide(saga, run, Resume(None, "end", "p"), at, IDS).after
    assert run.status.terminal
    for s in run.steps:
        if s.status == StepStatus.COMPENSATED:
            assert saga.wait(s.name) is None
