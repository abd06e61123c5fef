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

from workflows.core.definition import Saga
from workflows.core.state import (ActionFailed, ActionSucceeded, ActionTimedOut, Cancel, Command,
                                  CompensationFailed, CompensationSucceeded, DeadLetter, DeadLetterClosure,
                                  HistoryEvent, IdSource, Ignored, Outcome, Redispatch, Resume, RunState,
                                  RunStatus, Started, StepState, StepStatus, Timing, Transition)


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
        case Cancel(reason=reason, who=who):
            d.cancel(reason, who)
        case Resume(step=step, reason=reason, who=who):
            d.resume(step, reason, who)
        case Redispatch(step=step, reason=reason):
            d.redispatch(step, reason)
        case _:
            raise TypeError(f"unknown outcome {outcome!r}")
    return d.transition()


def new_run(saga: Saga, saga_id: str, data: dict[str, Any], caused_by: str) -> RunState:
    """A run as created, before `Started`: every step (and fan-out branch) PENDING, version 1."""
    return RunState(saga_id=saga_id, saga_type=saga.name, status=RunStatus.RUNNING, version=1, input=data,
                    steps=tuple(StepState(index=i, name=name) for i, (name, _) in enumerate(saga.rows(data))),
                    caused_by=caused_by, saga_version=saga.version)


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
        self.failure_reason = run.failure_reason
        self.deadline_at = run.deadline_at
        self.stage = {s.name: saga.stage_of(s.name) for s in run.steps}
        self.n_stages = len(saga.steps)

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
            if rows:
                for s in rows:
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
            todo = [s for s in rows if s.status in _MAY_HAVE_HAPPENED
                    and self.saga.step(s.name).compensation_name is not None]
            if todo:
                for s in todo:
                    self._dispatch(self._set(s, status=StepStatus.COMPENSATING), "compensation")
                return
        skipped = [s.name for s in self.steps if s.status in _MAY_HAVE_HAPPENED]
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
        return Transition(self.before, after, tuple(self.events), tuple(self.commands), tuple(self.dead_letters),
                          tuple(self.closures))

    def _dead_letter(self, kind: str, s: StepState, task: str, attempts: int, error: Any) -> None:
        dl = DeadLetter(self.ids(), kind, s.name, task, attempts, error)
        self.dead_letters.append(dl)
        self._emit("DeadLettered", s.name, attempts, kind=kind, error=str(error), dead_letter=dl.id)

    # -- outcomes
    def start(self) -> None:
        if self.status != RunStatus.RUNNING or any(s.status != StepStatus.PENDING for s in self.steps):
            raise Ignored("saga already started")
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
        policy = self.saga.step(s.name).retry
        # No new work once compensation began: a branch failing then is not retried.
        if o.retryable and attempt < policy.max_attempts and self.status == RunStatus.RUNNING:
            s = self._set(s, attempts=attempt, error=str(o.error))
            self._emit("StepAttemptFailed", s.name, attempt, error=str(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "action", o.countdown, retry=True)
            return
        exhausted = o.retryable and attempt >= policy.max_attempts
        s = self._set(s, status=StepStatus.FAILED, attempts=attempt, error=str(o.error),
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepFailed", s.name, attempt, error=str(o.error),
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
        policy = self.saga.step(s.name).compensation_retry
        if o.retryable and attempt < policy.max_attempts:
            s = self._set(s, compensation_attempts=attempt, error=str(o.error))
            self._emit("CompensationAttemptFailed", s.name, attempt, error=str(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "compensation", o.countdown, retry=True)
            return
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=attempt,
                      error=str(o.error), eta=None, deadline_at=None)
        self._emit("CompensationFailed", s.name, attempt, error=str(o.error),
                   reason="retries exhausted" if o.retryable else "permanent error")
        self._dead_letter("compensation", s, self.saga.step(s.name).compensation_name or "", attempt, o.error)
        if self.status != RunStatus.FAILED:
            self.status = RunStatus.FAILED
            self.failure_reason = (f"compensation of step {s.name!r} failed after {attempt} attempt(s): "
                                   f"{o.error}; an operator must fix the cause and redrive it")
            self._emit("SagaFailed", reason=self.failure_reason)

    def cancel(self, reason: str, who: str) -> None:
        if self.status != RunStatus.RUNNING:
            raise Ignored(f"only a RUNNING saga can be cancelled; this one is {self.status.value}")
        self._emit("SagaCancelled", reason=reason, who=who)
        for s in self.steps:
            if s.status == StepStatus.RUNNING:
                # The action may be in flight: its effect is unknown, so it is compensated.
                self._set(s, status=StepStatus.TIMED_OUT, error=f"cancelled: {reason}", eta=None,
                          deadline_at=None, finished_at=self.now)
                self._emit("StepTimedOut", s.name, s.attempts + 1, reason=f"cancelled: {reason}")
        self._begin_compensation(f"cancelled by {who}: {reason}")

    def redispatch(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._require((RunStatus.RUNNING,), s, StepStatus.RUNNING, "Redispatch")
        self._emit("StepRedispatched", s.name, s.attempts + 1, reason=reason)
        self._dispatch(s, "action")

    def resume(self, name: str | None, reason: str, who: str) -> None:
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
            live = [s for s in self.steps if s.status == want and (name is None or s.name == name)]
            if not live:
                raise Ignored(f"step {name!r} is not in flight")
            s = live[0]
            kind = "action" if s.status == StepStatus.RUNNING else "compensation"
            self._emit("StepRetriedByOperator", s.name, reason=reason, who=who, kind=kind)
            self._dispatch(s, kind)
            return
        raise Ignored(f"a {self.status.value} saga has nothing to resume")
