"""One decision in the making: the run's rows as they change, the events, commands and orders it
accumulates, and the three places that act on a node's kind: the stage runner (`_run_stage`), the
compensation walker (`_next_compensation`) and the stop of what is in flight (`_stop`). The
outcome handlers (step_outcomes.py, wait_outcomes.py, child_outcomes.py) build on it; `decide`
(engine.py) is the interface. Pure."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from workflows.core.child import Child
from workflows.core.outlook import compensation_plan, may_have_happened
from workflows.core.plan import Kind, PlanNode, SidePolicy
from workflows.core.run import RunState, RunStatus, Side, Signal, StepState, StepStatus
from workflows.core.saga import ChildDefinitions, Saga, declared_child
from workflows.core.state import (ChildFinished, Command, DeadLetter, DeadLetterClosure, ErrorInfo, HistoryEvent,
                                  IdSource, Ignored, Order, Timing, Transition)
from workflows.core.wait import Wait

TRACEBACK_LIMIT = 4000
"""Characters of a failure's traceback kept in its history row (the end: where it was raised)."""


def new_run(saga: Saga, saga_id: str, data: dict[str, Any], caused_by: str,
            parent: tuple[str, str] | None = None) -> RunState:
    """A run as created, before `Started`: every step (and fan-out branch) PENDING, version 1.
    `parent`: (parent run id, its `Child` step) of a child run."""
    return RunState(saga_id=saga_id, saga_type=saga.name, status=RunStatus.RUNNING, version=1, input=data,
                    steps=tuple(StepState(index=i, name=name) for i, (name, _) in enumerate(saga.rows(data))),
                    caused_by=caused_by, saga_version=saga.version, parent_id=parent[0] if parent else None,
                    parent_step=parent[1] if parent else None)


def message_policy(saga: Saga, name: str, side: Side) -> SidePolicy:
    """The policy of `side` of row `name`: the task its message runs, its retry policy, its time limit."""
    policy = saga.plan.node(name).policy(side)
    if policy is None:
        raise Ignored(f"step {name!r} of saga {saga.name!r} has no {side.value} message to send (a child saga: "
                      "act on the child run itself)")
    return policy


def command(saga: Saga, run: RunState, s: StepState, side: Side, version: int) -> Command:
    """The message of `side` of step `s`, dispatched at run version `version`."""
    policy = message_policy(saga, s.name, side)
    assert s.task_id is not None, "a dispatched step always has a task id"
    stage = saga.stage_of(s.name)
    first = next(x.index for x in run.steps if saga.stage_of(x.name) == stage)
    return Command(kind=side, step=s.name, task=policy.task, task_id=s.task_id, version=version,
                   eta=s.eta, time_limit=policy.timeout, results_before=first)


def error_detail(error: ErrorInfo) -> dict[str, Any]:
    """A failure's history detail: the error, and its traceback when the worker sent one (the console shows it)."""
    detail: dict[str, Any] = {"error": str(error)}
    if error.traceback:
        detail["traceback"] = error.traceback[-TRACEBACK_LIMIT:]
    return detail


class Decision:
    """Accumulates one transition. Private to the engine: `decide` is the interface."""

    def __init__(self, saga: Saga, run: RunState, now: datetime, ids: IdSource, timing: Timing,
                 children: ChildDefinitions = declared_child) -> None:
        self.saga, self.before, self.now, self.ids, self.timing = saga, run, now, ids, timing
        self.plan = saga.plan
        self.children_of = children
        self.status = run.status
        self.steps = list(run.steps)
        self.events: list[HistoryEvent] = []
        self.commands: list[Command] = []
        self.dead_letters: list[DeadLetter] = []
        self.closures: list[DeadLetterClosure] = []
        self.children: list[Transition] = []
        self.orders: list[Order] = []
        self.failure_reason = run.failure_reason
        self.deadline_at = run.deadline_at
        self.stage = {s.name: self.plan.node(s.name).stage for s in run.steps}
        self.n_stages = len(saga.steps)
        self.kept = list(run.signals)
        """Signals kept for a wait not begun yet (after this transition)."""
        self.recorded: list[Signal] = []
        self.consumed: list[Signal] = []

    # -- the kinds of node, each matched here once per concern
    def _park(self, s: StepState, wait: Wait) -> None:
        raise NotImplementedError  # wait_outcomes.py

    def _start_child(self, s: StepState, child: Child) -> None:
        raise NotImplementedError  # child_outcomes.py

    def _node(self, s: StepState) -> PlanNode:
        return self.plan.node(s.name)

    # -- helpers
    def _get(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise Ignored(f"saga {self.saga.name!r} has no step {name!r}")

    def _set(self, s: StepState, **changes: Any) -> StepState:
        new = replace(s, **changes)
        self.steps[s.index] = new
        return new

    def _emit(self, type_: str, step: str | None = None, attempt: int | None = None, **detail: Any) -> None:
        self.events.append(HistoryEvent(type_, step, attempt, detail))

    def _require(self, statuses: tuple[RunStatus, ...], s: StepState, step_status: StepStatus, what: str) -> None:
        if self.status not in statuses or s.status != step_status:
            raise Ignored(
                f"{what} for step {s.name!r} ignored: run is {self.status.value}, step is {s.status.value}",
                HistoryEvent("OutcomeIgnored", s.name, None, {
                    "outcome": what, "run_status": self.status.value, "step_status": s.status.value}),
            )

    def _in_stage(self, stage: int) -> list[StepState]:
        return [s for s in self.steps if self.stage[s.name] == stage]

    def _dispatch(self, s: StepState, side: Side, delay: float = 0.0, retry: bool = False) -> None:
        """Mark `s` in flight and emit its message. A retry keeps the task id (as Celery's retry does).
        A row with no message on that side (a child saga) is refused: act on the child run itself."""
        policy = message_policy(self.saga, s.name, side)
        eta = self.now + timedelta(seconds=delay) if delay > 0 else None
        start = eta or self.now
        deadline = start + timedelta(seconds=policy.timeout + self.timing.dispatch_grace)
        task_id = s.task_id if retry and s.task_id else f"{self.before.saga_id}.{s.name}.{side.value}.{self.ids()[:8]}"
        s = self._set(s, task_id=task_id, eta=eta, deadline_at=deadline)
        cmd = command(self.saga, self.before, s, side, self.before.version + 1)
        self.commands.append(cmd)
        self._emit("StepDispatched" if side is Side.ACTION else "CompensationDispatched", s.name,
                   self._attempts(s, side) + 1, task=cmd.task, task_id=s.task_id,
                   eta=eta.isoformat() if eta else None, deadline_at=deadline.isoformat())

    @staticmethod
    def _attempts(s: StepState, side: Side) -> int:
        return s.attempts if side is Side.ACTION else s.compensation_attempts

    def _run_stage(self, stage: int) -> None:
        """The stage runner: start every row of `stage` together (one of a line; all of a group or
        fan-out), or complete the run when there is no such stage (or it has no row: an empty fan-out)."""
        while stage < self.n_stages:
            rows = self._in_stage(stage)
            if rows:
                self.status = RunStatus.RUNNING
                for s in rows:
                    node = self._node(s)
                    match node.kind:
                        case Kind.WAIT:
                            assert isinstance(node.declared, Wait)
                            self._park(s, node.declared)  # a wait is a stage of its own
                        case Kind.CHILD:
                            assert isinstance(node.declared, Child)
                            self._start_child(s, node.declared)
                        case Kind.STEP:
                            self._dispatch(self._set(s, status=StepStatus.RUNNING), Side.ACTION)
                return
            stage += 1
        self.status = RunStatus.COMPLETED
        self.deadline_at = None
        self._emit("SagaCompleted")

    def _begin_compensation(self, reason: str) -> None:
        self.status = RunStatus.COMPENSATING
        self.failure_reason = reason
        self.deadline_at = None
        self._emit("CompensationStarted", reason=reason)
        self._stop(reason, cancelled=False)
        self._next_compensation()

    def _stop(self, reason: str, *, cancelled: bool) -> None:
        """No new work once compensation began. A running child (a group's branch, or any on a
        cancel) is ordered to cancel; its step waits until the child is settled. On a cancel
        (`cancelled`), a parked wait ends (it has no effect) and a task step in flight is timed
        out: its effect is unknown, so it is compensated."""
        for s in self.steps:
            match self._node(s).kind:
                case Kind.CHILD if s.status == StepStatus.RUNNING and s.task_id is not None and not cancelled:
                    self.orders.append(Order(s.task_id, self._cancel_order(reason)))
                    self._emit("ChildCancelOrdered", s.name, None, child_id=s.task_id)
                case Kind.WAIT if s.status == StepStatus.WAITING and cancelled:
                    self._set(s, status=StepStatus.FAILED, error=f"cancelled: {reason}", deadline_at=None,
                              finished_at=self.now)
                    self._emit("WaitCancelled", s.name, reason=reason)
                case Kind.STEP if s.status == StepStatus.RUNNING and cancelled:
                    self._set(s, status=StepStatus.TIMED_OUT, error=f"cancelled: {reason}", eta=None,
                              deadline_at=None, finished_at=self.now)
                    self._emit("StepTimedOut", s.name, s.attempts + 1, reason=f"cancelled: {reason}")

    def _cancel_order(self, reason: str) -> Any:
        raise NotImplementedError  # child_outcomes.py

    def _compensate_child(self, s: StepState) -> None:
        raise NotImplementedError  # child_outcomes.py

    def _next_compensation(self) -> None:
        """The compensation walker: undo the newest stage that may have had an effect, all of it at
        once, or finish.

        Stage by stage, newest first (stage order is completion order, immune to clock skew): a
        stage with a step still in flight (an action whose outcome is not in yet, a compensation
        running) is waited for; one whose compensation is stuck keeps the run FAILED; otherwise
        every step of it that may have had an effect is compensated, concurrently. Which stage, and
        which of its rows, is `compensation_plan`'s first stage: the views show the rest of it."""
        plan = compensation_plan(self.plan, self.steps)
        if plan:
            first = plan[0]
            if not first.blocked:
                for s in map(self._get, first.compensate):
                    match self._node(s).kind:
                        case Kind.CHILD:
                            self._compensate_child(s)
                        case Kind.STEP:
                            self._dispatch(self._set(s, status=StepStatus.COMPENSATING), Side.COMPENSATION)
            return
        skipped = [s.name for s in self.steps if self._may_have_happened(s) and self._node(s).kind is not Kind.WAIT]
        if skipped:
            self._emit("CompensationSkipped", steps=skipped, reason="no compensation declared")
        self.status = RunStatus.COMPENSATED
        self._emit("SagaCompensated", reason=self.failure_reason)

    def _may_have_happened(self, s: StepState) -> bool:
        return may_have_happened(self.plan, s)

    def _settled(self, reason: str) -> None:
        """A step ended without success: compensate (the run's first failure), or go on compensating."""
        if self.status == RunStatus.RUNNING:
            self._begin_compensation(reason)
        elif self.status == RunStatus.COMPENSATING:
            self._next_compensation()

    def _fail_run(self, reason: str) -> None:
        """The run is FAILED for an operator (once: a second stuck compensation keeps the first reason)."""
        if self.status == RunStatus.FAILED:
            return
        self.status = RunStatus.FAILED
        self.deadline_at = None
        self.failure_reason = reason
        self._emit("SagaFailed", reason=reason)

    def _dead_letter(self, side: Side, s: StepState, attempts: int, error: Any) -> None:
        task = message_policy(self.saga, s.name, side).task
        dl = DeadLetter(self.ids(), side.value, s.name, task, attempts, error)
        self.dead_letters.append(dl)
        self._emit("DeadLettered", s.name, attempts, kind=side.value, error=str(error), dead_letter=dl.id)

    def transition(self) -> Transition:
        after = replace(self.before, status=self.status, version=self.before.version + 1,
                        steps=tuple(self.steps), failure_reason=self.failure_reason,
                        deadline_at=self.deadline_at)
        if self.kept != list(self.before.signals):
            after = replace(after, signals=tuple(self.kept))
        if after.parent_id and after.parent_step and after.status.terminal and self.before.status != after.status:
            # a child settled (or is stuck): its parent's `Child` step hears of it after this commit
            self.orders.append(Order(after.parent_id, ChildFinished(
                after.parent_step, after.saga_id, after.status, after.results(), after.failure_reason)))
        return Transition(self.before, after, tuple(self.events), tuple(self.commands), tuple(self.dead_letters),
                          tuple(self.closures), signals=tuple(self.recorded), consumed=tuple(self.consumed),
                          children=tuple(self.children), orders=tuple(self.orders))
