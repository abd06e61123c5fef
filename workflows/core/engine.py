"""The saga engine: a pure function from (definition, run state, outcome) to a transition.

No Celery, no SQL, no clock, no random ids: `now` and `ids` come from the caller. The runtime
loads a `RunState`, asks `decide(...)` what follows, has the store write the returned
`Transition` atomically, then publishes its commands. `command_for(...)` derives the message a
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
    """A run as created, before `Started`: every step PENDING, version 1."""
    return RunState(saga_id=saga_id, saga_type=saga.name, status=RunStatus.RUNNING, version=1, input=data,
                    steps=tuple(StepState(index=i, name=st.name) for i, st in enumerate(saga.steps)),
                    caused_by=caused_by)


def command_for(saga: Saga, run: RunState, timing: Timing = Timing()) -> Command | None:
    """The message `run` is waiting on, derived from its state alone (for recovery)."""
    for s in run.steps:
        if run.status == RunStatus.RUNNING and s.status == StepStatus.RUNNING:
            return _command(saga, s, "action", run.version)
        if run.status == RunStatus.COMPENSATING and s.status == StepStatus.COMPENSATING:
            return _command(saga, s, "compensation", run.version)
    return None


def _command(saga: Saga, s: StepState, kind: str, version: int) -> Command:
    step = saga.steps[s.index]
    if kind == "action":
        task, limit = step.action_name, step.timeout
    else:
        task, limit = step.compensation_name or "", step.effective_compensation_timeout
    assert s.task_id is not None, "a dispatched step always has a task id"
    return Command(kind=kind, step=s.name, task=task, task_id=s.task_id, version=version,
                   eta=s.eta, time_limit=limit)


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

    # -- helpers
    def _get(self, name: str) -> StepState:
        try:
            return self.steps[self.saga.index_of(name)]
        except Exception:
            raise Ignored(f"saga {self.saga.name!r} has no step {name!r}") from None

    def _set(self, s: StepState, **changes: Any) -> StepState:
        new = replace(s, **changes)
        self.steps[s.index] = new
        return new

    def _emit(self, type_: str, step: str | None = None, attempt: int | None = None, **detail: Any) -> None:
        self.events.append(HistoryEvent(type_, step, attempt, detail))

    def _require(self, status: RunStatus, s: StepState, step_status: StepStatus, what: str) -> None:
        if self.status != status or s.status != step_status:
            raise Ignored(
                f"{what} for step {s.name!r} ignored: run is {self.status.value}, step is {s.status.value}",
                HistoryEvent("OutcomeIgnored", s.name, None, {
                    "outcome": what, "run_status": self.status.value, "step_status": s.status.value}),
            )

    def _dispatch(self, s: StepState, kind: str, delay: float = 0.0, retry: bool = False) -> None:
        """Mark `s` in flight and emit its message. A retry keeps the task id (as Celery's retry does)."""
        step = self.saga.steps[s.index]
        limit = step.timeout if kind == "action" else step.effective_compensation_timeout
        eta = self.now + timedelta(seconds=delay) if delay > 0 else None
        start = eta or self.now
        deadline = start + timedelta(seconds=limit + self.timing.dispatch_grace)
        task_id = s.task_id if retry and s.task_id else f"{self.before.saga_id}.{s.name}.{kind}.{self.ids()[:8]}"
        s = self._set(s, task_id=task_id, eta=eta, deadline_at=deadline)
        command = _command(self.saga, s, kind, self.before.version + 1)
        self.commands.append(command)
        self._emit("StepDispatched" if kind == "action" else "CompensationDispatched", s.name,
                   (s.attempts if kind == "action" else s.compensation_attempts) + 1,
                   task=command.task, task_id=s.task_id,
                   eta=eta.isoformat() if eta else None, deadline_at=deadline.isoformat())

    def _run_action(self, s: StepState, delay: float = 0.0) -> None:
        s = self._set(s, status=StepStatus.RUNNING)
        self._dispatch(s, "action", delay)

    def _begin_compensation(self, reason: str) -> None:
        self.status = RunStatus.COMPENSATING
        self.failure_reason = reason
        self.deadline_at = None
        self._emit("CompensationStarted", reason=reason)
        self._next_compensation()

    def _next_compensation(self) -> None:
        """Dispatch the compensation of the newest step that may have had an effect, or finish."""
        # Steps run one after another, so index order is completion order (and immune to clock skew).
        for s in reversed(self.steps):
            if s.status not in (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT):
                continue
            if self.saga.steps[s.index].compensation_name is None:
                continue
            s = self._set(s, status=StepStatus.COMPENSATING)
            self._dispatch(s, "compensation")
            return
        skipped = [s.name for s in self.steps if s.status in (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT)]
        if skipped:
            self._emit("CompensationSkipped", steps=skipped, reason="no compensation declared")
        self.status = RunStatus.COMPENSATED
        self._emit("SagaCompensated", reason=self.failure_reason)

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
        self._run_action(self.steps[0])

    def action_succeeded(self, name: str, result: dict[str, Any]) -> None:
        s = self._get(name)
        self._require(RunStatus.RUNNING, s, StepStatus.RUNNING, "ActionSucceeded")
        s = self._set(s, status=StepStatus.SUCCEEDED, attempts=s.attempts + 1, result=result,
                      error=None, eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepSucceeded", s.name, s.attempts, result=result)
        if s.index + 1 < len(self.steps):
            self._run_action(self.steps[s.index + 1])
        else:
            self.status = RunStatus.COMPLETED
            self.deadline_at = None
            self._emit("SagaCompleted")

    def action_failed(self, o: ActionFailed) -> None:
        s = self._get(o.step)
        self._require(RunStatus.RUNNING, s, StepStatus.RUNNING, "ActionFailed")
        attempt = s.attempts + 1
        policy = self.saga.steps[s.index].retry
        if o.retryable and attempt < policy.max_attempts:
            s = self._set(s, attempts=attempt, error=str(o.error))
            self._emit("StepAttemptFailed", s.name, attempt, error=str(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "action", o.countdown, retry=True)
            return
        exhausted = o.retryable
        s = self._set(s, status=StepStatus.FAILED, attempts=attempt, error=str(o.error),
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepFailed", s.name, attempt, error=str(o.error),
                   reason="retries exhausted" if exhausted else "permanent error")
        if exhausted:
            self._dead_letter("action", s, self.saga.steps[s.index].action_name, attempt, o.error)
        self._begin_compensation(f"step {s.name!r} failed: {o.error}")

    def action_timed_out(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._require(RunStatus.RUNNING, s, StepStatus.RUNNING, "ActionTimedOut")
        s = self._set(s, status=StepStatus.TIMED_OUT, attempts=s.attempts + 1, error=reason,
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepTimedOut", s.name, s.attempts, reason=reason)
        self._begin_compensation(f"step {s.name!r} timed out: {reason}")

    def compensation_succeeded(self, name: str) -> None:
        s = self._get(name)
        self._require(RunStatus.COMPENSATING, s, StepStatus.COMPENSATING, "CompensationSucceeded")
        s = self._set(s, status=StepStatus.COMPENSATED, compensation_attempts=s.compensation_attempts + 1,
                      eta=None, deadline_at=None)
        self._emit("StepCompensated", s.name, s.compensation_attempts)
        self._next_compensation()

    def compensation_failed(self, o: CompensationFailed) -> None:
        s = self._get(o.step)
        self._require(RunStatus.COMPENSATING, s, StepStatus.COMPENSATING, "CompensationFailed")
        attempt = s.compensation_attempts + 1
        policy = self.saga.steps[s.index].compensation_retry
        if o.retryable and attempt < policy.max_attempts:
            s = self._set(s, compensation_attempts=attempt, error=str(o.error))
            self._emit("CompensationAttemptFailed", s.name, attempt, error=str(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, "compensation", o.countdown, retry=True)
            return
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=attempt,
                      error=str(o.error), eta=None, deadline_at=None)
        self.status = RunStatus.FAILED
        self.failure_reason = (f"compensation of step {s.name!r} failed after {attempt} attempt(s): "
                               f"{o.error}; an operator must fix the cause and redrive it")
        self._emit("CompensationFailed", s.name, attempt, error=str(o.error),
                   reason="retries exhausted" if o.retryable else "permanent error")
        self._dead_letter("compensation", s, self.saga.steps[s.index].compensation_name or "", attempt, o.error)
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
        self._begin_compensation(f"cancelled by {who}: {reason}")

    def redispatch(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._require(RunStatus.RUNNING, s, StepStatus.RUNNING, "Redispatch")
        self._emit("StepRedispatched", s.name, s.attempts + 1, reason=reason)
        self._dispatch(s, "action")

    def resume(self, name: str | None, reason: str, who: str) -> None:
        if self.status == RunStatus.FAILED:
            stuck = [s for s in self.steps if s.status == StepStatus.COMPENSATION_FAILED]
            if name is not None:
                stuck = [s for s in stuck if s.name == name]
            if not stuck:
                raise Ignored(f"no compensation of step {name!r} is stuck")
            s = self._set(stuck[0], status=StepStatus.COMPENSATING, compensation_attempts=0, error=None)
            self.status = RunStatus.COMPENSATING
            self._emit("CompensationResumed", s.name, reason=reason, who=who)
            # the dead letters of the stuck compensation are answered by this resume
            self.closures.append(DeadLetterClosure("REDRIVEN", f"resumed by {who}",
                                                   step=s.name, kind="compensation"))
            self._dispatch(s, "compensation")
            return
        if self.status in (RunStatus.RUNNING, RunStatus.COMPENSATING):
            want = StepStatus.RUNNING if self.status == RunStatus.RUNNING else StepStatus.COMPENSATING
            live = [s for s in self.steps if s.status == want and (name is None or s.name == name)]
            if not live:
                raise Ignored(f"step {name!r} is not in flight")
            kind = "action" if want == StepStatus.RUNNING else "compensation"
            self._emit("StepRetriedByOperator", live[0].name, reason=reason, who=who, kind=kind)
            self._dispatch(live[0], kind)
            return
        raise Ignored(f"a {self.status.value} saga has nothing to resume")

