"""The saga engine: a pure function from (definition, run state, outcome) to a transition.

No Celery, no SQL, no clock, no random ids: `now` and `ids` come from the caller. The runtime
loads a `RunState`, asks `decide(...)` what follows, has the store write the returned
`Transition` atomically, then publishes its commands. `commands_for(...)` derives the messages a
run is waiting on from its state alone, which is how recovery re-publishes a message lost in a crash.
"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from workflows.core.definition import Child, Saga, Wait, child_id
from workflows.core.errors import InvalidInput, UnknownSaga
from workflows.core.retry import RetryVerdict, retry_verdict
from workflows.core.state import (STARTED_BY, ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, ChildFinished,
                                  Command, Compensate, CompensationFailed, CompensationSucceeded, DeadLetter,
                                  DeadLetterClosure, ErrorInfo, HistoryEvent, IdSource, Ignored, Order, Outcome,
                                  Redispatch, Resume, RunState, RunStatus, Schedule, Signal, SignalReceived, Started,
                                  StepState, StepStatus, Timing, Transition, WaitTimedOut, WorkerLost)


def decide(saga: Saga, run: RunState, outcome: Outcome, now: datetime, ids: IdSource,
           timing: Timing = Timing()) -> Transition:
    """The transition `outcome` causes in `run` at time `now`, new ids drawn from `ids`. Raises
    `Ignored` if it causes none."""
    if run.saga_type != saga.name:
        raise ValueError(f"run {run.saga_id} is a {run.saga_type!r}, not a {saga.name!r}")
    if run.saga_version != saga.version:
        raise ValueError(f"run {run.saga_id} is on version {run.saga_version} of {saga.name!r}, not {saga.version}")
    d = _Decision(saga, run, now, ids, timing)
    match outcome:
        case Started():
            d.start()
        case ActionSucceeded(step=step, result=result):
            d.action_succeeded(step, result)
        case ActionFailed():
            d.action_failed(outcome)
        case ActionTimedOut(step=step, reason=reason):
            d.action_timed_out(step, reason)
        case CompensationSucceeded(step=step):
            d.compensation_succeeded(step)
        case CompensationFailed():
            d.compensation_failed(outcome)
        case WorkerLost():
            d.worker_lost(outcome)
        case Cancel(reason=reason, who=who):
            d.cancel(reason, who)
        case Resume(step=step, reason=reason, who=who):
            d.resume(step, reason, who)
        case Redispatch(step=step, reason=reason):
            d.redispatch(step, reason)
        case Schedule(at=at):
            d.schedule(at)
        case SignalReceived(signal=signal):
            d.signal_received(signal)
        case WaitTimedOut(step=step):
            d.wait_timed_out(step)
        case ChildFinished():
            d.child_finished(outcome)
        case Compensate(reason=reason, who=who):
            d.compensate(reason, who)
        case _:
            raise TypeError(f"unknown outcome {outcome!r}")
    return d.transition()


def new_run(saga: Saga, saga_id: str, data: dict[str, Any], caused_by: str,
            parent: tuple[str, str] | None = None) -> RunState:
    """A run as created, before `Started`: every step (and fan-out branch) PENDING, version 1.
    `parent`: (parent run id, its `Child` step) of a child run."""
    return RunState(saga_id=saga_id, saga_type=saga.name, status=RunStatus.RUNNING, version=1, input=data,
                    steps=tuple(StepState(index=i, name=name) for i, (name, _) in enumerate(saga.rows(data))),
                    caused_by=caused_by, saga_version=saga.version, parent_id=parent[0] if parent else None,
                    parent_step=parent[1] if parent else None)


def is_current(run: RunState, step: str, kind: str, task_id: str, attempt: int) -> bool:
    """Is the message (`task_id`, attempt `attempt`) of `kind` of `step` the one its step waits on?

    Each dispatch gives a step a new task id (a retry keeps it and counts an attempt), so a
    duplicate, a message overtaken by a timeout, a cancel or an operator's retry, and a report
    already recorded all find their step elsewhere. The run's version is not the test: the
    branches of a group report one after the other, each moving the version on."""
    try:
        s = run.step(step)
    except KeyError:
        return False
    if s.task_id != task_id:
        return False
    if kind == "action":
        return s.status == StepStatus.RUNNING and s.attempts + 1 == attempt
    return s.status == StepStatus.COMPENSATING and s.compensation_attempts + 1 == attempt


def commands_for(saga: Saga, run: RunState, timing: Timing = Timing()) -> tuple[Command, ...]:
    """The messages `run` is waiting on, derived from its state alone (for recovery)."""
    out = []
    for s in run.steps:
        if saga.child(s.name) is not None:
            continue  # a child step waits on a run, not on a message (the sweeper's `child_links`)
        if s.status == StepStatus.RUNNING and not run.status.terminal:
            out.append(_command(saga, run, s, "action", run.version))
        elif s.status == StepStatus.COMPENSATING:
            out.append(_command(saga, run, s, "compensation", run.version))
    return tuple(out)


def command_for(saga: Saga, run: RunState, timing: Timing = Timing()) -> Command | None:
    """The first message `run` is waiting on (a line of steps waits on one at most)."""
    found = commands_for(saga, run, timing)
    return found[0] if found else None


def _command(saga: Saga, run: RunState, s: StepState, kind: str, version: int) -> Command:
    step = saga.step(s.name)
    if kind == "action":
        task, limit = step.action_name, step.timeout
    else:
        task, limit = step.compensation_name or "", step.effective_compensation_timeout
    assert s.task_id is not None, "a dispatched step always has a task id"
    stage = saga.stage_of(s.name)
    first = next(x.index for x in run.steps if saga.stage_of(x.name) == stage)
    return Command(kind=kind, step=s.name, task=task, task_id=s.task_id, version=version,
                   eta=s.eta, time_limit=limit, results_before=first)


_IN_FLIGHT = (StepStatus.RUNNING, StepStatus.COMPENSATING)
_MAY_HAVE_HAPPENED = (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT)


class _Decision:
    """Accumulates one transition. Private: `decide` is the interface."""

    def __init__(self, saga: Saga, run: RunState, now: datetime, ids: IdSource, timing: Timing) -> None:
        self.saga, self.before, self.now, self.ids, self.timing = saga, run, now, ids, timing
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
        self.stage = {s.name: saga.stage_of(s.name) for s in run.steps}
        self.n_stages = len(saga.steps)
        self.kept = list(run.signals)
        """Signals kept for a wait not begun yet (after this transition)."""
        self.recorded: list[Signal] = []
        self.consumed: list[Signal] = []

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

    def _dispatch(self, s: StepState, kind: str, delay: float = 0.0, retry: bool = False) -> None:
        """Mark `s` in flight and emit its message. A retry keeps the task id (as Celery's retry does)."""
        step = self.saga.step(s.name)
        limit = step.timeout if kind == "action" else step.effective_compensation_timeout
        eta = self.now + timedelta(seconds=delay) if delay > 0 else None
        start = eta or self.now
        deadline = start + timedelta(seconds=limit + self.timing.dispatch_grace)
        task_id = s.task_id if retry and s.task_id else f"{self.before.saga_id}.{s.name}.{kind}.{self.ids()[:8]}"
        s = self._set(s, task_id=task_id, eta=eta, deadline_at=deadline)
        command = _command(self.saga, self.before, s, kind, self.before.version + 1)
        self.commands.append(command)
        self._emit("StepDispatched" if kind == "action" else "CompensationDispatched", s.name,
                   (s.attempts if kind == "action" else s.compensation_attempts) + 1,
                   task=command.task, task_id=s.task_id,
                   eta=eta.isoformat() if eta else None, deadline_at=deadline.isoformat())

    def _run_stage(self, stage: int) -> None:
        """Dispatch every step of `stage` together (one of a line; all of a group or fan-out), or
        complete the run when there is no such stage (or it has no step: an empty fan-out)."""
        while stage < self.n_stages:
            rows = self._in_stage(stage)
            wait = self.saga.wait(rows[0].name) if rows else None
            if wait is not None:
                self._park(rows[0], wait)
                return
            if rows:
                self.status = RunStatus.RUNNING
                for s in rows:
                    child = self.saga.child(s.name)
                    if child is not None:
                        self._start_child(s, child)
                    else:
                        self._dispatch(self._set(s, status=StepStatus.RUNNING), "action")
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
        self._cancel_children(reason)
        self._next_compensation()

    def _next_compensation(self) -> None:
        """Undo the newest stage that may have had an effect, all of it at once, or finish.

        Stage by stage, newest first (stage order is completion order, immune to clock skew): a
        stage with a step still in flight (an action whose outcome is not in yet, a compensation
        running) is waited for; one whose compensation is stuck keeps the run FAILED; otherwise
        every step of it that succeeded or timed out is compensated, concurrently."""
        for stage in reversed(range(self.n_stages)):
            rows = self._in_stage(stage)
            if any(s.status in _IN_FLIGHT for s in rows):
                return
            if any(s.status == StepStatus.COMPENSATION_FAILED for s in rows):
                return
            todo = [s for s in rows if s.status in _MAY_HAVE_HAPPENED and self.saga.wait(s.name) is None
                    and self._undoable(s.name)]
            if todo:
                for s in todo:
                    if self.saga.child(s.name) is not None:
                        self._compensate_child(s)
                    else:
                        self._dispatch(self._set(s, status=StepStatus.COMPENSATING), "compensation")
                return
        skipped = [s.name for s in self.steps if s.status in _MAY_HAVE_HAPPENED and self.saga.wait(s.name) is None]
        if skipped:
            self._emit("CompensationSkipped", steps=skipped, reason="no compensation declared")
        self.status = RunStatus.COMPENSATED
        self._emit("SagaCompensated", reason=self.failure_reason)

    def _settled(self, reason: str) -> None:
        """A step ended without success: compensate (the run's first failure), or go on compensating."""
        if self.status == RunStatus.RUNNING:
            self._begin_compensation(reason)
        elif self.status == RunStatus.COMPENSATING:
            self._next_compensation()

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

    # -- child sagas
    def _undoable(self, name: str) -> bool:
        """Has step `name` something to compensate with? A child always has: its own compensations."""
        return self.saga.child(name) is not None or self.saga.step(name).compensation_name is not None

    def _start_child(self, s: StepState, child: Child) -> None:
        """Start the child run of `s`: its creation (its `Started` transition) is written with this
        transition, its first messages published after it. Bad child input fails the step."""
        results = {x.name: x.result or {} for x in self.steps
                   if x.status == StepStatus.SUCCEEDED and self.stage[x.name] < self.stage[s.name]}
        try:
            definition = child.definition()
            data = child.child_input(self.before.input, results)
            cycle = child.first_stage_cycle(self.saga.name)
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
        self.children.append(decide(definition, run, Started(), self.now, self.ids, self.timing))
        self._set(s, status=StepStatus.RUNNING, task_id=cid, eta=None, deadline_at=None)
        self._emit("ChildStarted", s.name, 1, child_id=cid, saga=definition.name)

    def _cancel_children(self, reason: str) -> None:
        """No new work once compensation began: a running child (a group's branch, or one the run
        was cancelled under) is cancelled too; its step waits until the child is settled."""
        for s in self.steps:
            if s.status == StepStatus.RUNNING and s.task_id is not None and self.saga.child(s.name) is not None:
                self.orders.append(Order(s.task_id, Cancel(f"its parent is compensating: {reason}",
                                                           who=f"parent {self.before.saga_id}")))
                self._emit("ChildCancelOrdered", s.name, None, child_id=s.task_id)

    def _compensate_child(self, s: StepState) -> None:
        """Undo a COMPLETED child through its own compensations; `s` is compensated when it is COMPENSATED."""
        s = self._set(s, status=StepStatus.COMPENSATING)
        assert s.task_id is not None, "a started child step has its child's id"
        self.orders.append(Order(s.task_id, Compensate(self.failure_reason or "its parent is compensating",
                                                       who=f"parent {self.before.saga_id}")))
        self._emit("ChildCompensationOrdered", s.name, s.compensation_attempts + 1, child_id=s.task_id)

    def child_finished(self, o: ChildFinished) -> None:
        s = self._get(o.step)
        if self.saga.child(s.name) is None or s.task_id != o.child_id:
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
        if self.status != RunStatus.COMPLETED:
            raise Ignored(f"only a COMPLETED saga is compensated on its parent's order; this one is "
                          f"{self.status.value}")
        self._emit("SagaCompensationOrdered", reason=reason, who=who)
        self._begin_compensation(f"compensated by {who}: {reason}")

    def _dead_letter(self, kind: str, s: StepState, task: str, attempts: int, error: Any) -> None:
        dl = DeadLetter(self.ids(), kind, s.name, task, attempts, error)
        self.dead_letters.append(dl)
        self._emit("DeadLettered", s.name, attempts, kind=kind, error=str(error), dead_letter=dl.id)

    def _not_a_child(self, s: StepState) -> None:
        if self.saga.child(s.name) is not None:
            raise Ignored(f"step {s.name!r} is a child saga ({s.task_id}): act on the child run itself")

    # -- outcomes
    def start(self) -> None:
        if (self.status not in (RunStatus.RUNNING, RunStatus.SCHEDULED)
                or any(s.status != StepStatus.PENDING for s in self.steps)):
            raise Ignored("saga already started")
        self.status = RunStatus.RUNNING
        self._emit("SagaStarted")
        if self.saga.deadline is not None:
            self.deadline_at = self.now + timedelta(seconds=self.saga.deadline)
        else:
            self.deadline_at = None
        self._run_stage(0)

    def action_succeeded(self, name: str, result: dict[str, Any]) -> None:
        s = self._get(name)
        # A branch may report after a sibling failed: its effect is recorded, then undone.
        self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "ActionSucceeded")
        s = self._set(s, status=StepStatus.SUCCEEDED, attempts=s.attempts + 1, result=result,
                      error=None, eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepSucceeded", s.name, s.attempts, result=result)
        if self.status == RunStatus.COMPENSATING:
            self._next_compensation()
            return
        stage = self.stage[s.name]
        if all(x.status == StepStatus.SUCCEEDED for x in self._in_stage(stage)):
            self._run_stage(stage + 1)

    def action_failed(self, o: ActionFailed) -> None:
        s = self._get(o.step)
        self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "ActionFailed")
        attempt = s.attempts + 1
        verdict = retry_verdict(self.saga.step(s.name).retry, attempt, retryable=o.retryable)
        # No new work once compensation began: a branch failing then is not retried.
        if verdict is RetryVerdict.RETRY and self.status == RunStatus.RUNNING:
            s = self._set(s, attempts=attempt, error=str(o.error))
            self._emit("StepAttemptFailed", s.name, attempt, **_error_detail(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "action", o.countdown, retry=True)
            return
        exhausted = verdict is RetryVerdict.EXHAUSTED
        s = self._set(s, status=StepStatus.FAILED, attempts=attempt, error=str(o.error),
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepFailed", s.name, attempt, **_error_detail(o.error),
                   reason="retries exhausted" if exhausted else
                   "permanent error" if not o.retryable else "not retried: the saga is compensating")
        if exhausted:
            self._dead_letter("action", s, self.saga.step(s.name).action_name, attempt, o.error)
        self._settled(f"step {s.name!r} failed: {o.error}")

    def action_timed_out(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "ActionTimedOut")
        s = self._set(s, status=StepStatus.TIMED_OUT, attempts=s.attempts + 1, error=reason,
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepTimedOut", s.name, s.attempts, reason=reason)
        self._settled(f"step {s.name!r} timed out: {reason}")

    def compensation_succeeded(self, name: str) -> None:
        s = self._get(name)
        # A FAILED run may still have a sibling compensation in flight: it is recorded.
        self._require((RunStatus.COMPENSATING, RunStatus.FAILED), s, StepStatus.COMPENSATING,
                      "CompensationSucceeded")
        s = self._set(s, status=StepStatus.COMPENSATED, compensation_attempts=s.compensation_attempts + 1,
                      eta=None, deadline_at=None)
        self._emit("StepCompensated", s.name, s.compensation_attempts)
        if self.status == RunStatus.COMPENSATING:
            self._next_compensation()

    def compensation_failed(self, o: CompensationFailed) -> None:
        s = self._get(o.step)
        self._require((RunStatus.COMPENSATING, RunStatus.FAILED), s, StepStatus.COMPENSATING, "CompensationFailed")
        attempt = s.compensation_attempts + 1
        if retry_verdict(self.saga.step(s.name).compensation_retry, attempt,
                         retryable=o.retryable) is RetryVerdict.RETRY:
            s = self._set(s, compensation_attempts=attempt, error=str(o.error))
            self._emit("CompensationAttemptFailed", s.name, attempt, **_error_detail(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "compensation", o.countdown, retry=True)
            return
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=attempt,
                      error=str(o.error), eta=None, deadline_at=None)
        self._emit("CompensationFailed", s.name, attempt, **_error_detail(o.error),
                   reason="retries exhausted" if o.retryable else "permanent error")
        self._dead_letter("compensation", s, self.saga.step(s.name).compensation_name or "", attempt, o.error)
        if self.status != RunStatus.FAILED:
            self.status = RunStatus.FAILED
            self.failure_reason = (f"compensation of step {s.name!r} failed after {attempt} attempt(s): "
                                   f"{o.error}; an operator must fix the cause and redrive it")
            self._emit("SagaFailed", reason=self.failure_reason)

    def worker_lost(self, o: WorkerLost) -> None:
        """The step's workers kept dying: dead-lettered, and its effect unknown. An action is
        compensated as a timed-out one is; a compensation is stuck (the run FAILED) as one that
        exhausted its retries is. Never dispatched again."""
        s = self._get(o.step)
        error = ErrorInfo("WorkerLost", f"worker lost {o.losses} times")
        if o.kind == "action":
            self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "WorkerLost")
            s = self._set(s, status=StepStatus.TIMED_OUT, attempts=s.attempts + 1, error=str(error),
                          eta=None, deadline_at=None, finished_at=self.now)
            self._emit("StepWorkerLost", s.name, s.attempts, kind=o.kind, losses=o.losses)
            self._dead_letter("action", s, self.saga.step(s.name).action_name, s.attempts, error)
            self._settled(f"step {s.name!r}: {error.message}, its effect is unknown")
            return
        self._require((RunStatus.COMPENSATING, RunStatus.FAILED), s, StepStatus.COMPENSATING, "WorkerLost")
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=s.compensation_attempts + 1,
                      error=str(error), eta=None, deadline_at=None)
        self._emit("StepWorkerLost", s.name, s.compensation_attempts, kind=o.kind, losses=o.losses)
        self._dead_letter("compensation", s, self.saga.step(s.name).compensation_name or "",
                          s.compensation_attempts, error)
        if self.status != RunStatus.FAILED:
            self.status = RunStatus.FAILED
            self.failure_reason = (f"compensation of step {s.name!r}: {error.message}; "
                                   "an operator must fix the cause and redrive it")
            self._emit("SagaFailed", reason=self.failure_reason)

    def cancel(self, reason: str, who: str) -> None:
        if self.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.SCHEDULED):
            raise Ignored(f"only a RUNNING saga can be cancelled (or a WAITING or SCHEDULED one); this one is "
                          f"{self.status.value}")
        self._emit("SagaCancelled", reason=reason, who=who)
        for s in self.steps:
            if s.status == StepStatus.WAITING:  # a wait has no effect: nothing of it to undo
                self._set(s, status=StepStatus.FAILED, error=f"cancelled: {reason}", deadline_at=None,
                          finished_at=self.now)
                self._emit("WaitCancelled", s.name, reason=reason)
            if s.status == StepStatus.RUNNING and self.saga.child(s.name) is None:
                # The action may be in flight: its effect is unknown, so it is compensated.
                self._set(s, status=StepStatus.TIMED_OUT, error=f"cancelled: {reason}", eta=None,
                          deadline_at=None, finished_at=self.now)
                self._emit("StepTimedOut", s.name, s.attempts + 1, reason=f"cancelled: {reason}")
        self._begin_compensation(f"cancelled by {who}: {reason}")

    def redispatch(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._not_a_child(s)
        self._require((RunStatus.RUNNING,), s, StepStatus.RUNNING, "Redispatch")
        self._emit("StepRedispatched", s.name, s.attempts + 1, reason=reason)
        self._dispatch(s, "action")

    def resume(self, name: str | None, reason: str, who: str) -> None:
        if self.status == RunStatus.FAILED and self._failed_by_wait() and name is None:
            self._emit("SagaResumed", reason=reason, who=who)
            self._begin_compensation(f"resumed by {who} after a wait timed out: {reason or 'compensate'}")
            return
        if self.status == RunStatus.FAILED:
            stuck = [s for s in self.steps if s.status == StepStatus.COMPENSATION_FAILED]
            if name is not None:
                stuck = [s for s in stuck if s.name == name]
            if not stuck:
                raise Ignored(f"no compensation of step {name!r} is stuck")
            self.status = RunStatus.COMPENSATING
            for s in stuck:  # every stuck compensation of the run (or the one named) goes again
                s = self._set(s, status=StepStatus.COMPENSATING, compensation_attempts=0, error=None)
                self._emit("CompensationResumed", s.name, reason=reason, who=who)
                # the dead letters of the stuck compensation are answered by this resume
                self.closures.append(DeadLetterClosure("REDRIVEN", f"resumed by {who}", step=s.name,
                                                       kind="compensation"))
                self._dispatch(s, "compensation")
            return
        if self.status in (RunStatus.RUNNING, RunStatus.COMPENSATING):
            want = StepStatus.RUNNING if self.status == RunStatus.RUNNING else StepStatus.COMPENSATING
            if name is not None:
                self._not_a_child(self._get(name))
            live = [s for s in self.steps if s.status == want and (name is None or s.name == name)
                    and self.saga.child(s.name) is None]
            if not live:
                raise Ignored(f"step {name!r} is not in flight")
            s = live[0]
            kind = "action" if s.status == StepStatus.RUNNING else "compensation"
            self._emit("StepRetriedByOperator", s.name, reason=reason, who=who, kind=kind)
            self._dispatch(s, kind)
            return
        raise Ignored(f"a {self.status.value} saga has nothing to resume")

    # -- waits and signals (a `Wait` stage parks the run; a signal or its deadline moves it on)
    def schedule(self, at: datetime) -> None:
        if self.status != RunStatus.RUNNING or self.before.version != 1:
            raise Ignored("only a new run can be scheduled")
        self.status = RunStatus.SCHEDULED
        self.deadline_at = at
        self._emit("SagaScheduled", start_at=at.isoformat())

    def _park(self, s: StepState, wait: Wait) -> None:
        """Begin `wait`: the run is WAITING, the wait's deadline in its row; a signal kept for it
        (sent before the wait began) is consumed at once. A wait whose `when` is false for the
        run's input is skipped: SUCCEEDED at once, and the next stage runs."""
        if not wait.applies(self.before.input):
            s = self._set(s, status=StepStatus.SUCCEEDED, result={}, task_id=wait.task_marker, finished_at=self.now)
            self._emit("WaitSkipped", s.name, signal=wait.signal, reason="its condition (when) is false for this input")
            self._run_stage(self.stage[s.name] + 1)
            return
        self.status = RunStatus.WAITING
        deadline = self.now + timedelta(seconds=wait.timeout_seconds)
        s = self._set(s, status=StepStatus.WAITING, task_id=wait.task_marker, deadline_at=deadline)
        self._emit("WaitStarted", s.name, signal=wait.signal, deadline_at=deadline.isoformat())
        early = next((x for x in self.kept if x.name == wait.signal), None)
        if early is not None:
            self.kept.remove(early)
            early = replace(early, consumed_by=s.name)
            self.consumed.append(early)
            self._answer(s, wait, early)

    def _answer(self, s: StepState, wait: Wait, signal: Signal) -> None:
        """The wait `s` takes `signal`: approved, the saga goes on with its payload as the wait's
        result; rejected, it compensates what completed."""
        self._emit("SignalConsumed", s.name, signal=signal.name, signal_id=signal.id, who=signal.who,
                   idempotency_key=signal.idempotency_key)
        if wait.approves(signal.payload):
            s = self._set(s, status=StepStatus.SUCCEEDED, attempts=1, result=signal.payload, deadline_at=None,
                          finished_at=self.now)
            self._emit("WaitApproved", s.name, who=signal.who, result=signal.payload)
            self.status = RunStatus.RUNNING
            self._run_stage(self.stage[s.name] + 1)
            return
        why = signal.payload.get("reason") if isinstance(signal.payload.get("reason"), str) else None
        reason = f"wait {s.name!r} rejected by {signal.who}" + (f": {why}" if why else "")
        s = self._set(s, status=StepStatus.FAILED, attempts=1, result=signal.payload, error=reason,
                      deadline_at=None, finished_at=self.now)
        self._emit("WaitRejected", s.name, who=signal.who, reason=reason)
        self._begin_compensation(reason)

    def signal_received(self, signal: Signal) -> None:
        waits = self.saga.waits_for(signal.name)
        refused = HistoryEvent("SignalRefused", None, None, {
            "signal": signal.name, "who": signal.who, "idempotency_key": signal.idempotency_key,
            "run_status": self.status.value})
        if not waits:
            raise Ignored(f"saga {self.saga.name!r} has no wait for signal {signal.name!r}", refused)
        if self.status not in (RunStatus.SCHEDULED, RunStatus.RUNNING, RunStatus.WAITING):
            raise Ignored(f"saga {self.before.saga_id} is not waiting for signal {signal.name!r}: it is "
                          f"{self.status.value}", refused)
        if any(x.idempotency_key == signal.idempotency_key for x in self.kept):
            raise Ignored(f"signal {signal.idempotency_key!r} is already kept")
        rows = [self._get(w.name) for w in waits]
        self._emit("SignalReceived", None, signal=signal.name, signal_id=signal.id, who=signal.who,
                   idempotency_key=signal.idempotency_key)
        parked = next((s for s in rows if s.status == StepStatus.WAITING), None)
        if parked is not None:
            signal = replace(signal, consumed_by=parked.name)
            self.recorded.append(signal)
            wait = self.saga.wait(parked.name)
            assert wait is not None
            self._answer(parked, wait, signal)
            return
        ahead = [s for s in rows if s.status == StepStatus.PENDING]
        if len(ahead) > sum(1 for x in self.kept if x.name == signal.name):
            self.kept.append(signal)
            self.recorded.append(signal)
            self._emit("SignalKept", ahead[0].name, signal=signal.name, signal_id=signal.id,
                       reason="its wait has not begun: consumed when it begins")
            return
        why = (f"every wait for signal {signal.name!r} is over" if not ahead else
               f"a signal {signal.name!r} is already kept for wait {ahead[0].name!r}")
        raise Ignored(f"saga {self.before.saga_id} is not waiting for signal {signal.name!r}: {why}", refused)

    def wait_timed_out(self, name: str) -> None:
        s = self._get(name)
        wait = self.saga.wait(name)
        if wait is None:
            raise Ignored(f"step {name!r} is not a wait")
        self._require((RunStatus.WAITING,), s, StepStatus.WAITING, "WaitTimedOut")
        if s.deadline_at is not None and s.deadline_at > self.now:
            raise Ignored(f"wait {name!r} is not due before {s.deadline_at.isoformat()}")
        what = "default" if wait.default_result is not None else str(wait.on_timeout)
        self._emit("WaitTimedOut", s.name, signal=wait.signal, on_timeout=what)
        reason = f"wait {name!r} timed out: no signal {wait.signal!r} within {timedelta(seconds=wait.timeout_seconds)}"
        if wait.default_result is not None:
            self._set(s, status=StepStatus.SUCCEEDED, result=wait.default_result, error=f"{reason}; went on with "
                      "the default result", deadline_at=None, finished_at=self.now)
            self.status = RunStatus.RUNNING
            self._run_stage(self.stage[name] + 1)
            return
        self._set(s, status=StepStatus.TIMED_OUT, error=reason, deadline_at=None, finished_at=self.now)
        if wait.on_timeout == "compensate":
            self._begin_compensation(reason)
            return
        self.status = RunStatus.FAILED
        self.deadline_at = None
        self.failure_reason = f"{reason}; an operator must decide (resume compensates the saga)"
        self._emit("SagaFailed", reason=self.failure_reason)

    def _failed_by_wait(self) -> bool:
        """FAILED because a wait declared `on_timeout="fail"` timed out, nothing compensated yet."""
        undone = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
        return (any(s.status == StepStatus.TIMED_OUT and self.saga.wait(s.name) is not None for s in self.steps)
                and not any(s.status in undone for s in self.steps))


TRACEBACK_LIMIT = 4000
"""Characters of a failure's traceback kept in its history row (the end: where it was raised)."""


def _error_detail(error: ErrorInfo) -> dict[str, Any]:
    """A failure's history detail: the error, and its traceback when the worker sent one (the console shows it)."""
    detail: dict[str, Any] = {"error": str(error)}
    if error.traceback:
        detail["traceback"] = error.traceback[-TRACEBACK_LIMIT:]
    return detail
