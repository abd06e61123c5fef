"""Property tests of the pure engine over random shapes and random orders of delivery.

A saga of random stages (single steps, parallel groups, fan-outs; each step with or without a
compensation) is run by a simulated broker that delivers the messages in flight in a random order,
with random outcomes, duplicates and late copies of messages already handled, and sometimes an
operator's cancel; a delivery's worker may also be lost once too often (`WorkerLost`). A delivery
is checked against its step's dispatch (`is_current`) exactly as the step task does. Whatever the
order, these hold:

- each compensation runs at most once per step, and only for a step that succeeded or timed out;
- no action is dispatched once compensation began;
- every run ends terminal once every message was delivered;
- the history replays to the stored state of every step and of the run.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows import RetryPolicy, Saga, Step
from workflows.core.definition import ForEach, Node, Parallel
from workflows.core.engine import decide, is_current, new_run
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, Command, CompensationFailed,
                                  CompensationSucceeded, ErrorInfo, Ignored, Outcome, RunState, RunStatus, Started,
                                  StepStatus, WorkerLost)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "injected")
POLICY = RetryPolicy(max_attempts=2, initial_interval=0, jitter=False)


@st.composite
def shapes(draw: st.DrawFn) -> tuple[Saga, dict[str, list[int]]]:
    nodes: list[Node] = []
    n = 0

    def new_step() -> Step:
        nonlocal n
        n += 1
        undo = draw(st.booleans())
        return Step(f"s{n}", action="t.act", compensation="t.undo" if undo else None, retry=POLICY,
                    compensation_retry=POLICY)

    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["step", "group", "fan"]))
        if kind == "step":
            nodes.append(new_step())
        elif kind == "group":
            nodes.append(Parallel(f"g{n}", [new_step() for _ in range(draw(st.integers(1, 3)))]))
        else:
            nodes.append(ForEach(new_step(), items=lambda d, key=f"f{n}": d[key], max_items=4))
    data = {f"f{int(node.name[1:])}": list(range(draw(st.integers(0, 3))))
            for node in nodes if isinstance(node, ForEach)}
    return Saga("prop", steps=nodes), data


@dataclass
class Sim:
    saga: Saga
    run: RunState
    bag: list[tuple[Command, int]]
    """Messages in flight, each with the attempt number it carries (fixed when it was published)."""
    done: list[tuple[Command, int]]
    compensations: dict[str, int]
    counter: int = 0

    def ids(self) -> str:
        self.counter += 1
        return f"{self.counter:032x}"

    def apply(self, outcome: Outcome) -> None:
        before = self.run
        try:
            t = decide(self.saga, before, outcome, NOW, self.ids)
        except Ignored:
            return
        compensating_before = before.status != RunStatus.RUNNING
        for c in t.commands:
            if c.kind == "action":
                # no new work once compensation began (a retry of a running step is not new work
                # either, and the engine does not retry once compensating)
                assert not compensating_before and t.after.status == RunStatus.RUNNING, (outcome, c)
            else:
                old = before.step(c.step)
                assert old.status in (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING,
                                      StepStatus.COMPENSATION_FAILED, StepStatus.RUNNING), (c, old)
        if isinstance(outcome, CompensationSucceeded):
            self.compensations[outcome.step] = self.compensations.get(outcome.step, 0) + 1
            prior = before.step(outcome.step)
            assert prior.result is not None or prior.error is not None  # it had succeeded or timed out
        self.run = t.after
        for c in t.commands:
            s = t.after.step(c.step)
            self.bag.append((c, (s.attempts if c.kind == "action" else s.compensation_attempts) + 1))
        self.events.extend(t.events)

    events: list = None  # type: ignore[assignment]


def replay(run: RunState, events: list) -> tuple[str, dict[str, str]]:  # type: ignore[type-arg]
    steps = {s.name: "PENDING" for s in run.steps}
    state = "RUNNING"
    to = {"StepDispatched": "RUNNING", "StepSucceeded": "SUCCEEDED", "StepFailed": "FAILED",
          "StepTimedOut": "TIMED_OUT", "CompensationDispatched": "COMPENSATING", "StepCompensated": "COMPENSATED",
          "CompensationFailed": "COMPENSATION_FAILED"}
    runs = {"SagaCompleted": "COMPLETED", "CompensationStarted": "COMPENSATING", "SagaCompensated": "COMPENSATED",
            "SagaFailed": "FAILED"}
    for e in events:
        if e.type == "StepWorkerLost":  # given up: an action's effect is unknown, a compensation is stuck
            steps[e.step] = "TIMED_OUT" if e.detail["kind"] == "action" else "COMPENSATION_FAILED"
        elif e.type in to and e.step is not None:
            steps[e.step] = to[e.type]
        elif e.type in runs:
            state = runs[e.type]
    return state, steps


def deliver(sim: Sim, message: tuple[Command, int], data: st.DataObject) -> None:
    cmd, attempt = message
    if not is_current(sim.run, cmd.step, cmd.kind, cmd.task_id, attempt):
        return  # stale: the step task does not run it, nothing changes
    if cmd.kind == "action":
        outcome: Outcome = data.draw(st.sampled_from([
            ActionSucceeded(cmd.step, {"r": 1}), ActionFailed(cmd.step, ERR, retryable=False),
            ActionFailed(cmd.step, ERR, retryable=True), ActionTimedOut(cmd.step, "lost"),
            WorkerLost(cmd.step, "action", 2)]))
    else:
        outcome = data.draw(st.sampled_from([
            CompensationSucceeded(cmd.step), CompensationSucceeded(cmd.step),
            CompensationFailed(cmd.step, ERR, retryable=True), WorkerLost(cmd.step, "compensation", 2)]))
    sim.apply(outcome)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes(), st.data())
def test_any_shape_any_order_compensates_exactly_what_may_have_happened(shape, data) -> None:  # type: ignore[no-untyped-def]
    saga, inputs = shape
    sim = Sim(saga, new_run(saga, "r", inputs, "start"), [], [], {})
    sim.events = []
    sim.apply(Started())
    cancelled = False
    for _ in range(500):
        if not sim.bag:
            break
        if not cancelled and data.draw(st.integers(0, 30)) == 0:
            cancelled = True
            sim.apply(Cancel("operator", "ops"))
        # now and then a late copy of a message already handled, then the next one in flight
        late = [data.draw(st.sampled_from(sim.done))] if sim.done and data.draw(st.integers(0, 5)) == 0 else []
        if not sim.bag:
            break
        cmd = sim.bag.pop(data.draw(st.integers(0, len(sim.bag) - 1)))
        sim.done.append(cmd)
        for c in [*late, cmd]:
            deliver(sim, c, data)
    # every message delivered: the run is terminal
    assert not sim.bag and sim.run.status.terminal, (sim.run.status, [s.status for s in sim.run.steps])
    # each compensation ran at most once
    assert all(n == 1 for n in sim.compensations.values()), sim.compensations
    # a step that never started was never compensated; one compensated had succeeded or timed out
    for s in sim.run.steps:
        if s.status == StepStatus.COMPENSATED:
            assert s.name in sim.compensations
        if s.status == StepStatus.PENDING:
            assert s.name not in sim.compensations
    if sim.run.status == RunStatus.COMPLETED:
        assert all(s.status == StepStatus.SUCCEEDED for s in sim.run.steps)
    if sim.run.status == RunStatus.COMPENSATED:
        assert not any(s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.SUCCEEDED)
                       and saga.step(s.name).compensation_name is not None for s in sim.run.steps)
    # the history replays to the stored state
    state, steps = replay(sim.run, sim.events)
    assert state == sim.run.status.value
    assert steps == {s.name: s.status.value for s in sim.run.steps}
