"""The outcomes of a run's child sagas: how a child step starts (`_start_child`, the stage
runner's for a child), is cancelled or compensated by order, and hears its child finish; and the
order a completed child gets to compensate. Pure: the child's definition comes from the caller."""
from __future__ import annotations

from workflows.core.child import Child, child_id
from workflows.core.decision import new_run
from workflows.core.errors import InvalidInput, UnknownSaga
from workflows.core.run import RunStatus, StepState, StepStatus
from workflows.core.state import STARTED_BY, Cancel, ChildFinished, Compensate, HistoryEvent, Ignored, Order
from workflows.core.wait_outcomes import WaitOutcomes


class ChildOutcomes(WaitOutcomes):
    def _start_child(self, s: StepState, child: Child) -> None:
        """Start the child run of `s`: its creation (its `Started` transition) is written with this
        transition, its first messages published after it. Bad child input fails the step."""
        results = {x.name: x.result or {} for x in self.steps
                   if x.status == StepStatus.SUCCEEDED and self.stage[x.name] < self.stage[s.name]}
        try:
            definition = self.children_of(child)
            data = child.child_input(self.before.input, results, definition)
            cycle = child.first_stage_cycle(self.saga.name, self.children_of)
            if cycle is not None:
                raise InvalidInput(f"child step {s.name!r}: these sagas start each other at once, without end: "
                                   f"{' -> '.join(cycle)}")
        except (InvalidInput, UnknownSaga) as e:
            s = self._set(s, status=StepStatus.FAILED, attempts=1, error=str(e), finished_at=self.now)
            self._emit("StepFailed", s.name, 1, error=str(e), reason="child saga not started")
            self._settled(f"step {s.name!r} failed: {e}")
            return
        cid = child_id(self.before.saga_id, s.name)
        run = new_run(definition, cid, data, STARTED_BY, parent=(self.before.saga_id, s.name))
        kid = type(self)(definition, run, self.now, self.ids, self.timing, self.children_of)
        kid.start()
        self.children.append(kid.transition())
        self._set(s, status=StepStatus.RUNNING, task_id=cid, eta=None, deadline_at=None)
        self._emit("ChildStarted", s.name, 1, child_id=cid, saga=definition.name)

    def _cancel_order(self, reason: str) -> Cancel:
        return Cancel(f"its parent is compensating: {reason}", who=f"parent {self.before.saga_id}")

    def _compensate_child(self, s: StepState) -> None:
        """Undo a COMPLETED child through its own compensations; `s` is compensated when it is COMPENSATED."""
        s = self._set(s, status=StepStatus.COMPENSATING)
        assert s.task_id is not None, "a started child step has its child's id"
        self.orders.append(Order(s.task_id, Compensate(self.failure_reason or "its parent is compensating",
                                                       who=f"parent {self.before.saga_id}")))
        self._emit("ChildCompensationOrdered", s.name, s.compensation_attempts + 1, child_id=s.task_id)

    def child_finished(self, o: ChildFinished) -> None:
        s = self._get(o.step)
        # the child of step `s` is the run with its derived id (the step's task id since it started)
        if s.task_id != o.child_id or o.child_id != child_id(self.before.saga_id, s.name):
            raise Ignored(f"run {o.child_id} is not the child of step {o.step!r}")
        if o.status == RunStatus.FAILED:
            # its own compensation is stuck: the step waits until an operator settles the child
            raise Ignored(f"child {o.child_id} is FAILED", HistoryEvent("ChildNeedsOperator", s.name, None, {
                "child_id": o.child_id, "reason": o.reason}))
        if s.status == StepStatus.COMPENSATING:
            if o.status != RunStatus.COMPENSATED:
                raise Ignored(f"child {o.child_id} is {o.status.value}: its compensation was ordered")
            self.compensation_succeeded(s.name)
            return
        if o.status == RunStatus.COMPLETED:
            self.action_succeeded(s.name, o.results)  # the same guards and what follows as any step's success
            return
        if o.status != RunStatus.COMPENSATED:
            raise Ignored(f"child {o.child_id} is {o.status.value}, not settled")
        self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "ChildFinished")
        error = f"child saga {o.child_id} was compensated: {o.reason}"
        s = self._set(s, status=StepStatus.FAILED, attempts=s.attempts + 1, error=error, eta=None, deadline_at=None,
                      finished_at=self.now)
        # its effects were undone by its own compensations: nothing of it is left to compensate
        self._emit("StepFailed", s.name, s.attempts, error=error, reason="child saga compensated")
        self._settled(f"step {s.name!r} failed: {error}")

    def compensate(self, reason: str, who: str) -> None:
        """Its parent orders this COMPLETED run undone, through its own compensations."""
        if self.status != RunStatus.COMPLETED:
            raise Ignored(f"only a COMPLETED saga is compensated on its parent's order; this one is "
                          f"{self.status.value}")
        self._emit("SagaCompensationOrdered", reason=reason, who=who)
        self._begin_compensation(f"compensated by {who}: {reason}")
