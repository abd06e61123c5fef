"""The outcomes of a run's waits: a scheduled start, a signal, a wait's deadline; and how a wait
stage begins (`_park`, the stage runner's for a wait). Pure."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from workflows.core.run import RunStatus, Signal, StepState, StepStatus
from workflows.core.state import HistoryEvent, Ignored
from workflows.core.step_outcomes import StepOutcomes
from workflows.core.wait import Wait


class WaitOutcomes(StepOutcomes):
    # -- waits and signals (a `Wait` stage parks the run; a signal or its deadline moves it on)
    def schedule(self, at: datetime, cause: dict[str, Any] | None = None) -> None:
        if self.status != RunStatus.RUNNING or self.before.version != 1:
            raise Ignored("only a new run can be scheduled")
        self.status = RunStatus.SCHEDULED
        self.deadline_at = at
        detail: dict[str, Any] = {"start_at": at.isoformat(), **({"cause": cause} if cause else {})}
        self._emit("SagaScheduled", **detail)

    def _park(self, s: StepState, wait: Wait) -> None:  # the stage runner's, for a wait
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
        waits = self.plan.waits_for(signal.name)
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
            wait = next(w for w in waits if w.name == parked.name)
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
        wait = next((w for w in self.plan.waits if w.name == name), None)
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
        self._fail_run(f"{reason}; an operator must decide (resume compensates the saga)")
