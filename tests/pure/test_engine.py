"""The pure engine: (definition, run state, outcome) -> transition. No broker, no database."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from workflows import RetryPolicy, Saga, Step
from workflows.core.engine import command_for, decide, new_run
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, CompensationFailed,
                                  CompensationSucceeded, ErrorInfo, Ignored, Redispatch, Resume, RunState, RunStatus,
                                  Started, StepStatus, Timing)

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "it broke")


class Ids:
    """The ids the caller hands the engine: predictable, so a test can name them."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:08d}"


IDS = Ids()

SAGA = Saga("s", steps=[
    Step("a", action="svc.a", compensation="svc.undo_a", timeout=10),
    Step("b", action="svc.b", compensation=None, timeout=10),
    Step("c", action="svc.c", compensation="svc.undo_c", timeout=10,
         retry=RetryPolicy(max_attempts=3, initial_interval=1, jitter=False),
         compensation_retry=RetryPolicy(max_attempts=2, initial_interval=1, jitter=False)),
    Step("d", action="svc.d", compensation="svc.undo_d", timeout=10),
])


def fresh() -> RunState:
    return new_run(SAGA, "r1", {"x": 1}, caused_by="start")


def run(*outcomes) -> RunState:  # type: ignore[no-untyped-def]
    state = fresh()
    for o in outcomes:
        state = decide(SAGA, state, o, NOW, IDS).after
    return state


def statuses(state: RunState) -> list[str]:
    return [s.status.value for s in state.steps]


def test_start_dispatches_the_first_action_with_a_deadline() -> None:
    t = decide(SAGA, fresh(), Started(), NOW, IDS)
    assert t.command is not None
    assert (t.command.kind, t.command.step, t.command.task, t.command.version) == ("action", "a", "svc.a", 2)
    assert t.after.steps[0].deadline_at == NOW + timedelta(seconds=10 + Timing().dispatch_grace)
    assert statuses(t.after) == ["RUNNING", "PENDING", "PENDING", "PENDING"]
    assert [e.type for e in t.events] == ["SagaStarted", "StepDispatched"]


def test_a_new_run_is_version_1_with_every_step_pending() -> None:
    state = fresh()
    assert (state.version, state.status, state.caused_by) == (1, RunStatus.RUNNING, "start")
    assert [s.name for s in state.steps] == ["a", "b", "c", "d"] and set(statuses(state)) == {"PENDING"}


def test_redispatch_sends_a_running_step_again_under_a_new_version_and_task_id() -> None:
    started = decide(SAGA, fresh(), Started(), NOW, IDS)
    later = NOW + timedelta(seconds=100)
    t = decide(SAGA, started.after, Redispatch("a", "lost"), later, IDS)
    assert t.command is not None and (t.command.kind, t.command.step, t.command.version) == ("action", "a", 3)
    assert t.command.task_id != started.command.task_id  # type: ignore[union-attr]
    assert t.after.step("a").attempts == 0 and t.after.step("a").status == StepStatus.RUNNING
    assert t.after.step("a").deadline_at == later + timedelta(seconds=10 + Timing().dispatch_grace)
    assert [(e.type, e.attempt) for e in t.events] == [("StepRedispatched", 1), ("StepDispatched", 1)]
    with pytest.raises(Ignored):  # only a step in flight can be sent again
        decide(SAGA, run(Started(), ActionSucceeded("a", {})), Redispatch("a", "lost"), NOW, IDS)


def test_starting_twice_is_ignored() -> None:
    with pytest.raises(Ignored):
        decide(SAGA, run(Started()), Started(), NOW, IDS)


def test_success_advances_and_the_last_success_completes() -> None:
    state = run(Started(), ActionSucceeded("a", {"r": 1}), ActionSucceeded("b", {}), ActionSucceeded("c", {}))
    t = decide(SAGA, state, ActionSucceeded("d", {"done": True}), NOW, IDS)
    assert t.after.status == RunStatus.COMPLETED and t.command is None
    assert statuses(t.after) == ["SUCCEEDED"] * 4
    assert t.after.results() == {"a": {"r": 1}, "b": {}, "c": {}, "d": {"done": True}}
    assert t.events[-1].type == "SagaCompleted"


def test_retryable_failure_retries_with_the_same_task_id_until_attempts_run_out() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}))
    first_id = state.step("c").task_id
    t = decide(SAGA, state, ActionFailed("c", ERR, retryable=True, countdown=1.5), NOW, IDS)
    assert t.command is not None and t.command.task_id == first_id and t.command.eta == NOW + timedelta(seconds=1.5)
    assert t.after.step("c").attempts == 1 and t.after.step("c").status == StepStatus.RUNNING
    t = decide(SAGA, t.after, ActionFailed("c", ERR, retryable=True, countdown=2), NOW, IDS)
    t = decide(SAGA, t.after, ActionFailed("c", ERR, retryable=True, countdown=4), NOW, IDS)
    assert t.after.step("c").status == StepStatus.FAILED and t.after.step("c").attempts == 3
    [dl] = t.dead_letters
    assert dl.kind == "action" and dl.attempts == 3
    assert t.after.status == RunStatus.COMPENSATING
    assert t.command is not None and (t.command.kind, t.command.step) == ("compensation", "a")


def test_permanent_failure_compensates_at_once_without_dead_letter() -> None:
    state = run(Started(), ActionSucceeded("a", {}))
    t = decide(SAGA, state, ActionFailed("b", ERR, retryable=False), NOW, IDS)
    assert t.dead_letters == ()
    assert t.after.step("b").attempts == 1 and t.after.step("b").status == StepStatus.FAILED
    assert t.command is not None and t.command.step == "a" and t.command.kind == "compensation"


def test_first_step_failing_compensates_nothing() -> None:
    t = decide(SAGA, run(Started()), ActionFailed("a", ERR, retryable=False), NOW, IDS)
    assert t.after.status == RunStatus.COMPENSATED and t.command is None
    assert statuses(t.after) == ["FAILED", "PENDING", "PENDING", "PENDING"]


def test_compensations_run_newest_first_and_skip_steps_without_one() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionSucceeded("c", {"id": 7}))
    t = decide(SAGA, state, ActionFailed("d", ERR, retryable=False), NOW, IDS)
    assert t.command is not None and t.command.step == "c"
    t = decide(SAGA, t.after, CompensationSucceeded("c"), NOW, IDS)
    assert t.command is not None and t.command.step == "a"  # b declares no compensation
    t = decide(SAGA, t.after, CompensationSucceeded("a"), NOW, IDS)
    assert t.after.status == RunStatus.COMPENSATED
    assert statuses(t.after) == ["COMPENSATED", "SUCCEEDED", "COMPENSATED", "FAILED"]
    assert [e.type for e in t.events] == ["StepCompensated", "CompensationSkipped", "SagaCompensated"]


def test_timed_out_step_is_compensated_because_its_effect_is_unknown() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}))
    t = decide(SAGA, state, ActionTimedOut("c", "lost"), NOW, IDS)
    assert [e.type for e in t.events][:2] == ["StepTimedOut", "CompensationStarted"]
    assert t.after.step("c").status == StepStatus.COMPENSATING  # undone in the same transition
    assert t.command is not None and t.command.step == "c" and t.command.kind == "compensation"


def test_exhausted_compensation_fails_the_run_and_dead_letters_it() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionSucceeded("c", {}),
                ActionFailed("d", ERR, retryable=False))
    t = decide(SAGA, state, CompensationFailed("c", ERR, retryable=True, countdown=1), NOW, IDS)
    assert t.after.status == RunStatus.COMPENSATING and t.command is not None and t.command.eta is not None
    t = decide(SAGA, t.after, CompensationFailed("c", ERR, retryable=True, countdown=1), NOW, IDS)
    assert t.after.status == RunStatus.FAILED and t.command is None
    assert t.after.step("c").status == StepStatus.COMPENSATION_FAILED
    [dl] = t.dead_letters
    assert dl.kind == "compensation" and dl.step == "c"
    assert "operator" in (t.after.failure_reason or "")


def test_resume_of_a_failed_run_continues_the_compensation_chain() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionSucceeded("c", {}),
                ActionFailed("d", ERR, retryable=False), CompensationFailed("c", ERR, retryable=False))
    assert state.status == RunStatus.FAILED
    t = decide(SAGA, state, Resume(None, "fixed", "ops"), NOW, IDS)
    assert t.after.status == RunStatus.COMPENSATING and t.after.step("c").compensation_attempts == 0
    # the resume answers the stuck compensation's dead letters, in the same write
    [closure] = t.closures
    assert (closure.step, closure.kind, closure.status, closure.dead_letter_id) == ("c", "compensation", "REDRIVEN",
                                                                                   None)
    assert closure.resolution == "resumed by ops"
    t = decide(SAGA, t.after, CompensationSucceeded("c"), NOW, IDS)
    assert t.command is not None and t.command.step == "a"


def test_cancel_marks_the_running_step_unknown_and_compensates_it_too() -> None:
    state = run(Started(), ActionSucceeded("a", {}))
    t = decide(SAGA, state, Cancel("customer asked", "ops"), NOW, IDS)
    assert t.after.step("b").status == StepStatus.TIMED_OUT
    # b has no compensation: a is the first to undo
    assert t.command is not None and t.command.step == "a"
    with pytest.raises(Ignored):
        decide(SAGA, t.after, Cancel("again", "ops"), NOW, IDS)


@pytest.mark.parametrize("outcome", [
    ActionSucceeded("a", {}), ActionFailed("a", ERR, True), ActionTimedOut("a", "x"),
])
def test_a_late_outcome_for_a_step_that_is_no_longer_running_changes_nothing(outcome) -> None:  # type: ignore[no-untyped-def]
    state = run(Started(), ActionTimedOut("a", "lost"))
    with pytest.raises(Ignored) as info:
        decide(SAGA, state, outcome, NOW, IDS)
    assert info.value.event is not None and info.value.event.type == "OutcomeIgnored"


def test_a_step_that_never_started_is_never_compensated() -> None:
    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionFailed("c", ERR, False))
    assert state.step("d").status == StepStatus.PENDING
    with pytest.raises(Ignored):
        decide(SAGA, state, CompensationSucceeded("d"), NOW, IDS)


def test_command_for_rebuilds_the_message_a_run_waits_on() -> None:
    t = decide(SAGA, run(Started()), ActionFailed("a", ERR, retryable=True, countdown=3), NOW, IDS)
    assert command_for(SAGA, t.after) == t.command
    done = run(Started(), ActionFailed("a", ERR, retryable=False))
    assert command_for(SAGA, done) is None


def test_every_transition_bumps_the_version_once() -> None:
    state = fresh()
    for o in (Started(), ActionSucceeded("a", {}), ActionFailed("b", ERR, False), CompensationSucceeded("a")):
        t = decide(SAGA, state, o, NOW, IDS)
        assert t.after.version == state.version + 1
        state = t.after


def test_decide_refuses_a_run_of_another_saga() -> None:
    with pytest.raises(ValueError):
        decide(SAGA, replace(fresh(), saga_type="other"), Started(), NOW, IDS)


def test_ids_come_from_the_caller_task_ids_and_dead_letters_alike() -> None:
    # Given an id source the test controls
    ids = iter(["aaaaaaaa0000", "bbbbbbbb1111", "cccccccc2222", "dddddddd3333"])

    # When the engine starts a run, exhausts a retryable action and dead-letters it
    t = decide(SAGA, fresh(), Started(), NOW, lambda: next(ids))
    t2 = decide(SAGA, t.after, ActionFailed("a", ERR, retryable=True), NOW, lambda: next(ids))
    t3 = decide(SAGA, t2.after, ActionFailed("a", ERR, retryable=True), NOW, lambda: next(ids))
    t4 = decide(SAGA, t3.after, ActionFailed("a", ERR, retryable=True), NOW, lambda: next(ids))

    # Then every id it wrote is one of the caller's: the engine makes none of its own
    assert t.command is not None and t.command.task_id == "r1.a.action.aaaaaaaa"
    assert t2.command is not None and t2.command.task_id == "r1.a.action.aaaaaaaa"  # a retry keeps its task id
    [dl] = t4.dead_letters
    assert dl.id == "bbbbbbbb1111"
    assert [e.detail.get("dead_letter") for e in t4.events if e.type == "DeadLettered"] == ["bbbbbbbb1111"]


def test_the_same_inputs_decide_the_same_transition() -> None:
    # the engine is a function: same definition, state, outcome, time and ids give equal transitions
    state = run(Started(), ActionSucceeded("a", {}))
    first = decide(SAGA, state, ActionFailed("b", ERR, retryable=False), NOW, lambda: "same-id-0")
    second = decide(SAGA, state, ActionFailed("b", ERR, retryable=False), NOW, lambda: "same-id-0")
    assert first == second


def test_a_lost_worker_given_up_dead_letters_the_action_and_compensates_it_as_unknown() -> None:
    from workflows.core.state import WorkerLost

    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}))
    t = decide(SAGA, state, WorkerLost("c", "action", 3), NOW, IDS)
    c = t.after.step("c")
    assert (c.status, c.attempts, c.error) == (StepStatus.COMPENSATING, 1, "WorkerLost: worker lost 3 times")
    assert [(d.kind, d.step, d.task, str(d.error)) for d in t.dead_letters] == [
        ("action", "c", "svc.c", "WorkerLost: worker lost 3 times")]
    # its effect is unknown: c's own compensation goes first, then a's (b has none)
    assert t.after.status == RunStatus.COMPENSATING
    assert [(cmd.kind, cmd.step) for cmd in t.commands] == [("compensation", "c")]
    assert [e.type for e in t.events] == ["StepWorkerLost", "DeadLettered", "CompensationStarted",
                                          "CompensationDispatched"]
    # a report of the same step afterwards is ignored: the step is no longer running
    with pytest.raises(Ignored):
        decide(SAGA, t.after, WorkerLost("c", "action", 4), NOW, IDS)


def test_a_lost_worker_given_up_on_a_compensation_fails_the_saga_for_an_operator() -> None:
    from workflows.core.state import WorkerLost

    state = run(Started(), ActionSucceeded("a", {}), ActionSucceeded("b", {}), ActionSucceeded("c", {}),
                ActionFailed("d", ERR, retryable=False))
    assert state.step("c").status == StepStatus.COMPENSATING
    t = decide(SAGA, state, WorkerLost("c", "compensation", 2), NOW, IDS)
    assert t.after.status == RunStatus.FAILED and t.commands == ()
    assert t.after.step("c").status == StepStatus.COMPENSATION_FAILED
    assert [(d.kind, str(d.error)) for d in t.dead_letters] == [("compensation", "WorkerLost: worker lost 2 times")]
    assert "worker lost 2 times" in (t.after.failure_reason or "")
    with pytest.raises(Ignored):  # the action's outcome is not what is in flight
        decide(SAGA, state, WorkerLost("c", "action", 2), NOW, IDS)
