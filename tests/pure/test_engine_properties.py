"""Property tests of the pure engine over random shapes and random orders of delivery.

A saga of random stages (single steps, parallel groups, fan-outs, child sagas; each step with or
without a compensation, some declaring `compensate_failure`; each child a random saga of its own)
is run by a simulated broker that delivers the messages in flight in a random order, with random
outcomes, duplicates and late copies of messages already handled, and sometimes an operator's
cancel; a delivery's worker may also be lost once too often (`WorkerLost`). The orders a transition
gives other runs (start, cancel or compensate a child, report to the parent) are in flight too,
delivered in any order, and sometimes twice (the sweeper's recovery repeating one). A child whose
own compensation got stuck (FAILED) is resumed by an operator once nothing else is in flight. A
delivery is checked against its step's dispatch (`is_current`) exactly as the step task does.
Whatever the order, these hold, for the parent and for every child:

- each compensation runs at most once per step, and only for a step that succeeded or timed out,
  or failed for good while declaring `compensate_failure` (it may have acted before failing);
- no action is dispatched once compensation began;
- every run ends terminal once every message was delivered;
- the history replays to the stored state of every step and of the run;
- a parent that ends COMPENSATED leaves every child it started COMPENSATED.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workflows import RetryPolicy, Saga, Step
from workflows.core.definition import Child, ForEach, Node, Parallel
from workflows.core.engine import decide, is_current, new_run
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, Command, Compensate,
                                  CompensationFailed, CompensationSucceeded, ErrorInfo, HistoryEvent, Ignored, Order,
                                  Outcome, Resume, RunState, RunStatus, Started, StepStatus, Transition, WorkerLost)

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
ERR = ErrorInfo("Boom", "injected")
POLICY = RetryPolicy(max_attempts=2, initial_interval=0, jitter=False)


@st.composite
def shapes(draw: st.DrawFn, children: bool = True) -> tuple[Saga, dict[str, list[int]]]:
    nodes: list[Node] = []
    n = 0

    def new_step() -> Step:
        nonlocal n
        n += 1
        undo = draw(st.booleans())
        undo_failure = undo and draw(st.booleans())
        return Step(f"s{n}", action="t.act", compensation="t.undo" if undo else None, retry=POLICY,
                    compensation_retry=POLICY, compensate_failure=undo_failure)

    def new_child() -> Child:
        nonlocal n
        n += 1
        inner, inner_data = draw(shapes(children=False))
        kid = Saga(f"kid{n}", steps=list(inner.steps))
        return Child(f"c{n}", saga=kid, input=lambda d, results, x=inner_data: x)

    kinds = ["step", "group", "fan", "child", "child"] if children else ["step", "group", "fan"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        if kind == "step":
            nodes.append(new_step())
        elif kind == "group":  # a branch may be a child saga
            nodes.append(Parallel(f"g{n}", [new_child() if children and draw(st.integers(0, 3)) == 0 else new_step()
                                            for _ in range(draw(st.integers(1, 3)))]))
        elif kind == "fan":
            nodes.append(ForEach(new_step(), items=lambda d, key=f"f{n}": d[key], max_items=4))
        else:
            nodes.append(new_child())
    data = {f"f{int(node.name[1:])}": list(range(draw(st.integers(0, 3))))
            for node in nodes if isinstance(node, ForEach)}
    return Saga("prop", steps=nodes), data


Message = tuple[str, Command, int] | Order
"""A step message (run id, command, the attempt it carries) or an order for a run."""


@dataclass
class Sim:
    sagas: dict[str, Saga]
    runs: dict[str, RunState]
    events: dict[str, list[HistoryEvent]]
    bag: list[Message]
    done: list[Message]
    compensations: dict[tuple[str, str], int]
    happened: set[tuple[str, str]] = field(default_factory=set)
    """(run, step) of every step that succeeded or timed out, or failed for good while declaring
    `compensate_failure` (its effect may have happened)."""
    fixed: bool = False
    """An operator fixed the cause of stuck compensations: from now on they succeed."""
    counter: int = 0

    def ids(self) -> str:
        self.counter += 1
        return f"{self.counter:032x}"

    def apply(self, run_id: str, outcome: Outcome) -> None:
        saga, before = self.sagas[run_id], self.runs[run_id]
        try:
            t = decide(saga, before, outcome, NOW, self.ids)
        except Ignored:
            return
        self.record(saga, t)

    def record(self, saga: Saga, t: Transition) -> None:
        before, run_id = t.before, t.after.saga_id
        compensating_before = before.status != RunStatus.RUNNING
        for c in t.commands:
            if c.kind == "action":
                # no new work once compensation began (a retry of a running step is not new work
                # either, and the engine does not retry once compensating)
                assert not compensating_before and t.after.status == RunStatus.RUNNING, (c, t.events)
            else:
                old = before.step(c.step)
                assert old.status in (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING,
                                      StepStatus.COMPENSATION_FAILED, StepStatus.RUNNING) or (
                    old.status == StepStatus.FAILED and undoes_failure(saga, c.step)), (c, old)
        # starting a child is new work too
        assert not (t.children and compensating_before), t.events
        for o in t.orders:
            if isinstance(o.outcome, Compensate):  # only a child that completed (its step succeeded) is undone
                [kid] = [s for s in t.after.steps if s.task_id == o.saga_id]
                assert kid.result is not None and self.runs[o.saga_id].status == RunStatus.COMPLETED, kid
        # (a cancel times a step out and dispatches its compensation in one transition: its events say so)
        self.happened |= {(run_id, e.step) for e in t.events if e.step is not None and (
            e.type in ("StepSucceeded", "StepTimedOut")
            or (e.type == "StepFailed" and undoes_failure(saga, e.step))  # it may have acted before failing
            or (e.type == "StepWorkerLost" and e.detail["kind"] == "action"))}  # its effect is unknown
        for old, new in zip(before.steps, t.after.steps):
            key = (run_id, new.name)
            if new.status == StepStatus.COMPENSATED and old.status != StepStatus.COMPENSATED:
                self.compensations[key] = self.compensations.get(key, 0) + 1
                assert key in self.happened, key  # it had succeeded or timed out (or failed, declaring it)
        self.runs[run_id] = t.after
        self.sagas[run_id] = saga
        self.events.setdefault(run_id, []).extend(t.events)
        for c in t.commands:
            s = t.after.step(c.step)
            self.bag.append((run_id, c, (s.attempts if c.kind == "action" else s.compensation_attempts) + 1))
        for child in t.children:
            child_saga = saga.child(child.after.parent_step or "")
            assert child_saga is not None and child.after.saga_id not in self.runs  # started once
            self.runs[child.after.saga_id] = child.before
            assert child_saga.declared is not None
            self.record(child_saga.declared, child)
        self.bag.extend(t.orders)

    def stuck(self) -> list[str]:
        """FAILED children a parent waits on: an operator resumes them."""
        return [rid for rid, r in self.runs.items() if r.status == RunStatus.FAILED and r.parent_id is not None
                and self.runs[r.parent_id].step(r.parent_step or "").status in (StepStatus.RUNNING,
                                                                                StepStatus.COMPENSATING)]


def undoes_failure(saga: Saga, name: str) -> bool:
    """Row `name` is a task step declaring `compensate_failure`."""
    return saga.child(name) is None and saga.step(name).compensate_failure


def replay(run: RunState, events: list[HistoryEvent]) -> tuple[str, dict[str, str]]:
    steps = {s.name: "PENDING" for s in run.steps}
    state = "RUNNING"
    to = {"StepDispatched": "RUNNING", "StepSucceeded": "SUCCEEDED", "StepFailed": "FAILED",
          "StepTimedOut": "TIMED_OUT", "CompensationDispatched": "COMPENSATING", "StepCompensated": "COMPENSATED",
          "CompensationFailed": "COMPENSATION_FAILED", "ChildStarted": "RUNNING",
          "ChildCompensationOrdered": "COMPENSATING", "CompensationResumed": "COMPENSATING"}
    runs = {"SagaCompleted": "COMPLETED", "CompensationStarted": "COMPENSATING", "SagaCompensated": "COMPENSATED",
            "SagaFailed": "FAILED", "CompensationResumed": "COMPENSATING"}
    for e in events:
        if e.type == "StepWorkerLost":  # given up: an action's effect is unknown, a compensation is stuck
            steps[e.step] = "TIMED_OUT" if e.detail["kind"] == "action" else "COMPENSATION_FAILED"
        elif e.type in to and e.step is not None:
            steps[e.step] = to[e.type]
        if e.type in runs:
            state = runs[e.type]
    return state, steps


def deliver(sim: Sim, message: Message, data: st.DataObject) -> None:
    if isinstance(message, Order):
        sim.apply(message.saga_id, message.outcome)
        return
    run_id, cmd, attempt = message
    if not is_current(sim.runs[run_id], cmd.step, cmd.kind, cmd.task_id, attempt):
        return  # stale: the step task does not run it, nothing changes
    if cmd.kind == "action":
        outcome: Outcome = data.draw(st.sampled_from([  # success more often: runs get past their children
            ActionSucceeded(cmd.step, {"r": 1}), ActionSucceeded(cmd.step, {"r": 2}),
            ActionSucceeded(cmd.step, {"r": 3}), ActionFailed(cmd.step, ERR, retryable=False),
            ActionFailed(cmd.step, ERR, retryable=True), ActionTimedOut(cmd.step, "lost"),
            WorkerLost(cmd.step, "action", 2)]))
    elif sim.fixed:
        outcome = CompensationSucceeded(cmd.step)
    else:
        outcome = data.draw(st.sampled_from([
            CompensationSucceeded(cmd.step), CompensationSucceeded(cmd.step),
            CompensationFailed(cmd.step, ERR, retryable=True), WorkerLost(cmd.step, "compensation", 2)]))
    sim.apply(run_id, outcome)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shapes(), st.data())
def test_any_shape_any_order_compensates_exactly_what_may_have_happened(shape, data) -> None:  # type: ignore[no-untyped-def]
    saga, inputs = shape
    sim = Sim({"r": saga}, {"r": new_run(saga, "r", inputs, "start")}, {}, [], [], {})
    sim.apply("r", Started())
    cancelled = False
    for _ in range(2000):
        if not sim.bag:
            stuck = sim.stuck()
            if not stuck:
                break
            sim.fixed = True  # the operator fixed the cause and resumes every stuck child
            for rid in stuck:
                sim.apply(rid, Resume(None, "fixed", "ops"))
            continue
        if not cancelled and data.draw(st.integers(0, 20)) == 0:
            cancelled = True
            sim.apply("r", Cancel("operator", "ops"))
        # now and then a late copy of a message already handled, then the next one in flight
        late = [data.draw(st.sampled_from(sim.done))] if sim.done and data.draw(st.integers(0, 5)) == 0 else []
        if not sim.bag:
            continue
        message = sim.bag.pop(data.draw(st.integers(0, len(sim.bag) - 1)))
        sim.done.append(message)
        for m in [*late, message]:
            deliver(sim, m, data)
    if any(isinstance(node, Parallel) and any(isinstance(b, Child) for b in node.steps) for node in saga.steps):
        event("a group with a child branch")
    if any(e.type == "StepCompensated" and undoes_failure(sim.sagas[rid], e.step or "")
           and (rid, e.step) in sim.happened and any(f.type == "StepFailed" and f.step == e.step for f in evs)
           for rid, evs in sim.events.items() for e in evs):
        event("a step that failed for good compensated (compensate_failure)")
    for rid, run in sim.runs.items():  # what the examples cover (pytest --hypothesis-show-statistics)
        if run.parent_id is not None:
            event(f"child {run.status.value}" + (" after its parent's order" if any(
                e.type in ("SagaCompensationOrdered", "SagaCancelled") for e in sim.events[rid]) else ""))
    # every message delivered: every run is terminal
    assert not sim.bag
    for rid, run in sim.runs.items():
        assert run.status.terminal, (rid, run.status, [s.status for s in run.steps])
    # each compensation ran at most once
    assert all(n == 1 for n in sim.compensations.values()), sim.compensations
    for rid, run in sim.runs.items():
        definition = sim.sagas[rid]
        # a step that never started was never compensated; one compensated had succeeded or timed out
        # (or failed, declaring `compensate_failure`)
        for s in run.steps:
            if s.status == StepStatus.COMPENSATED:
                assert (rid, s.name) in sim.compensations
            if s.status == StepStatus.PENDING:
                assert (rid, s.name) not in sim.compensations
        if run.status == RunStatus.COMPLETED:
            assert all(s.status == StepStatus.SUCCEEDED for s in run.steps)
        if run.status == RunStatus.COMPENSATED:
            assert not any(s.status in (StepStatus.RUNNING, StepStatus.COMPENSATING, StepStatus.SUCCEEDED)
                           and (definition.child(s.name) is not None
                                or definition.step(s.name).compensation_name is not None) for s in run.steps)
            # ... nor a step that failed for good while declaring `compensate_failure`
            assert not any(s.status == StepStatus.FAILED and undoes_failure(definition, s.name)
                           for s in run.steps), [(s.name, s.status) for s in run.steps]
            # every child it started is undone
            for s in run.steps:
                if definition.child(s.name) is not None and s.task_id is not None:
                    assert sim.runs[s.task_id].status == RunStatus.COMPENSATED, (s, sim.runs[s.task_id].status)
        # the history replays to the stored state
        state, steps = replay(run, sim.events.get(rid, []))
        assert state == run.status.value, rid
        assert steps == {s.name: s.status.value for s in run.steps}, rid
    # a child step's result is its child's results
    for s in sim.runs["r"].steps:
        if saga.child(s.name) is not None and s.status == StepStatus.SUCCEEDED:
            assert s.result == sim.runs[s.task_id or ""].results()
