"""The outcomes of a run's task steps and of its operators: a start, an action's or a compensation's
report, a lost worker, a cancel, a redispatch, and the three things a resume may mean. Pure."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from workflows.core.decision import Decision, error_detail
from workflows.core.retry import RetryVerdict, retry_verdict
from workflows.core.run import RunStatus, Side, StepState, StepStatus
from workflows.core.state import (ActionFailed, CompensationFailed, DeadLetterClosure, ErrorInfo, Ignored,
                                  WorkerLost)


def _row_error(s: StepState, compensation_error: str | None) -> str | None:
    """A step row's error once its compensation failed or is resumed: the action's, when the action
    did not succeed (no result: it failed or timed out), so that every attempt of the compensation
    receives it (`ctx.error`); otherwise the compensation's. The compensation's own errors are in
    the history, its dead letter and the run's failure reason either way."""
    return s.error if s.result is None and s.error is not None else compensation_error


class StepOutcomes(Decision):
    def start(self, cause: dict[str, Any] | None = None) -> None:
        if (self.status not in (RunStatus.RUNNING, RunStatus.SCHEDULED)
                or any(s.status != StepStatus.PENDING for s in self.steps)):
            raise Ignored("saga already started")
        self.status = RunStatus.RUNNING
        detail: dict[str, Any] = {"cause": cause} if cause else {}
        self._emit("SagaStarted", **detail)
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
        verdict = retry_verdict(self.plan.node(s.name).policies[Side.ACTION].retry, attempt, retryable=o.retryable)
        # No new work once compensation began: a branch failing then is not retried.
        if verdict is RetryVerdict.RETRY and self.status == RunStatus.RUNNING:
            s = self._set(s, attempts=attempt, error=str(o.error))
            self._emit("StepAttemptFailed", s.name, attempt, **error_detail(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, Side.ACTION, o.countdown, retry=True)
            return
        exhausted = verdict is RetryVerdict.EXHAUSTED
        s = self._set(s, status=StepStatus.FAILED, attempts=attempt, error=str(o.error),
                      eta=None, deadline_at=None, finished_at=self.now)
        self._emit("StepFailed", s.name, attempt, **error_detail(o.error),
                   reason="retries exhausted" if exhausted else
                   "permanent error" if not o.retryable else "not retried: the saga is compensating")
        if exhausted:
            self._dead_letter(Side.ACTION, s, attempt, o.error)
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
        if retry_verdict(self.plan.node(s.name).policies[Side.COMPENSATION].retry, attempt,
                         retryable=o.retryable) is RetryVerdict.RETRY:
            s = self._set(s, compensation_attempts=attempt, error=_row_error(s, str(o.error)))
            self._emit("CompensationAttemptFailed", s.name, attempt, **error_detail(o.error),
                       retry_in=round(o.countdown, 3))
            self._dispatch(s, Side.COMPENSATION, o.countdown, retry=True)
            return
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=attempt,
                      error=_row_error(s, str(o.error)), eta=None, deadline_at=None)
        self._emit("CompensationFailed", s.name, attempt, **error_detail(o.error),
                   reason="retries exhausted" if o.retryable else "permanent error")
        self._dead_letter(Side.COMPENSATION, s, attempt, o.error)
        self._fail_run(f"compensation of step {s.name!r} failed after {attempt} attempt(s): {o.error}; "
                       "an operator must fix the cause and redrive it")

    def worker_lost(self, o: WorkerLost) -> None:
        """The step's workers kept dying: dead-lettered, and its effect unknown. An action is
        compensated as a timed-out one is; a compensation is stuck (the run FAILED) as one that
        exhausted its retries is. Never dispatched again."""
        s = self._get(o.step)
        error = ErrorInfo("WorkerLost", f"worker lost {o.losses} times")
        if o.kind == Side.ACTION:
            self._require((RunStatus.RUNNING, RunStatus.COMPENSATING), s, StepStatus.RUNNING, "WorkerLost")
            s = self._set(s, status=StepStatus.TIMED_OUT, attempts=s.attempts + 1, error=str(error),
                          eta=None, deadline_at=None, finished_at=self.now)
            self._emit("StepWorkerLost", s.name, s.attempts, kind=o.kind, losses=o.losses)
            self._dead_letter(Side.ACTION, s, s.attempts, error)
            self._settled(f"step {s.name!r}: {error.message}, its effect is unknown")
            return
        self._require((RunStatus.COMPENSATING, RunStatus.FAILED), s, StepStatus.COMPENSATING, "WorkerLost")
        s = self._set(s, status=StepStatus.COMPENSATION_FAILED, compensation_attempts=s.compensation_attempts + 1,
                      error=_row_error(s, str(error)), eta=None, deadline_at=None)
        self._emit("StepWorkerLost", s.name, s.compensation_attempts, kind=o.kind, losses=o.losses)
        self._dead_letter(Side.COMPENSATION, s, s.compensation_attempts, error)
        self._fail_run(f"compensation of step {s.name!r}: {error.message}; an operator must fix the cause and "
                       "redrive it")

    def cancel(self, reason: str, who: str) -> None:
        if self.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.SCHEDULED):
            raise Ignored(f"only a RUNNING saga can be cancelled (or a WAITING or SCHEDULED one); this one is "
                          f"{self.status.value}")
        self._emit("SagaCancelled", reason=reason, who=who)
        self._stop(reason, cancelled=True)
        self._begin_compensation(f"cancelled by {who}: {reason}")

    def redispatch(self, name: str, reason: str) -> None:
        s = self._get(name)
        self._require((RunStatus.RUNNING,), s, StepStatus.RUNNING, "Redispatch")
        self._emit("StepRedispatched", s.name, s.attempts + 1, reason=reason)
        self._dispatch(s, Side.ACTION)  # a child saga has no message: refused (act on the child run)

    # -- a resume: what it does depends on the run
    def resume(self, name: str | None, reason: str, who: str) -> None:
        if self.status == RunStatus.FAILED and name is None and self._failed_by_wait():
            self.compensate_after_wait(reason, who)
        elif self.status == RunStatus.FAILED:
            self.resume_compensations(name, reason, who)
        elif self.status in (RunStatus.RUNNING, RunStatus.COMPENSATING):
            self.retry_in_flight(name, reason, who)
        else:
            raise Ignored(f"a {self.status.value} saga has nothing to resume")

    def compensate_after_wait(self, reason: str, who: str) -> None:
        """A run FAILED by a wait's timeout (`on_timeout="fail"`): an operator decided, it compensates."""
        self._emit("SagaResumed", reason=reason, who=who)
        self._begin_compensation(f"resumed by {who} after a wait timed out: {reason or 'compensate'}")

    def resume_compensations(self, name: str | None, reason: str, who: str) -> None:
        """Every stuck compensation of a FAILED run (or the one named) goes again, from attempt 1."""
        stuck = [s for s in self.steps if s.status == StepStatus.COMPENSATION_FAILED and name in (None, s.name)]
        if not stuck:
            raise Ignored(f"no compensation of step {name!r} is stuck")
        self.status = RunStatus.COMPENSATING
        for s in stuck:
            s = self._set(s, status=StepStatus.COMPENSATING, compensation_attempts=0, error=_row_error(s, None))
            self._emit("CompensationResumed", s.name, reason=reason, who=who)
            # the dead letters of the stuck compensation are answered by this resume
            self.closures.append(DeadLetterClosure("REDRIVEN", f"resumed by {who}", step=s.name,
                                                   kind=Side.COMPENSATION.value))
            self._dispatch(s, Side.COMPENSATION)

    def retry_in_flight(self, name: str | None, reason: str, who: str) -> None:
        """Send the message of a step in flight again now (an operator's retry)."""
        side = Side.ACTION if self.status == RunStatus.RUNNING else Side.COMPENSATION
        want = StepStatus.RUNNING if side is Side.ACTION else StepStatus.COMPENSATING
        live = [s for s in self.steps if s.status == want and name in (None, s.name)
                and (name is not None or self.plan.node(s.name).policy(side) is not None)]
        if not live:
            raise Ignored(f"step {name!r} is not in flight")
        s = live[0]
        self._emit("StepRetriedByOperator", s.name, reason=reason, who=who, kind=side.value)
        self._dispatch(s, side)  # a child saga has no message: refused (act on the child run)

    def _failed_by_wait(self) -> bool:
        """FAILED because a wait declared `on_timeout="fail"` timed out, nothing compensated yet."""
        undone = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
        waits = {w.name for w in self.plan.waits}
        return (any(s.status == StepStatus.TIMED_OUT and s.name in waits for s in self.steps)
                and not any(s.status in undone for s in self.steps))
