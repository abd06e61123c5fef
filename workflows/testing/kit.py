"""`SagaKit`: a team's sagas run in-process, on SQLite, with a virtual clock and no servers.

    def test_a_declined_card_releases_the_stock(saga_kit):
        saga_kit.fail("payment.charge", permanent=True)
        saga_id = saga_kit.start("order_fulfillment", order)
        assert saga_kit.state(saga_id) == "COMPENSATED"
        assert [c.step for c in saga_kit.compensations(saga_id)] == ["reserve_inventory"]

Every message the runs send is delivered at once by the in-process worker (the team's real step
functions run); a retry waits for its backoff and a wait for its deadline until the test moves the
clock (`advance`), or `settle` jumps over the retries' backoffs.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from workflows.core.errors import DefinitionError
from workflows.core.registry import registry
from workflows.core.saga import Saga
from workflows.core.steps import step_tasks
from workflows.core.views import SagaView, Signalled
from workflows.operations.actions import cancel, resume
from workflows.operations.client import start_saga
from workflows.operations.signals import signal
from workflows.operations.sweeper import SweepReport, sweep
from workflows.runtime.container import Runtime
from workflows.testing.clock import Clock
from workflows.testing.faults import Call, Fault
from workflows.testing.worker import Worker

Side = Literal["action", "compensation"]


class SagaKit:
    """Start, signal, cancel and move the clock; inject faults; read what happened."""

    def __init__(self, rt: Runtime, worker: Worker, clock: Clock) -> None:
        self.rt, self.worker, self.clock = rt, worker, clock

    # ------------------------------------------------------------ drive

    def start(self, saga: Saga | str, data: Any, **options: Any) -> str:
        """Start `saga` (`start_saga`'s options) and deliver what it sends. Returns the saga id."""
        saga_id = start_saga(saga, data, **options)
        self.worker.drain()
        return saga_id

    def signal(self, saga_id: str, name: str, payload: Any = None, **options: Any) -> Signalled:
        """Send signal `name` to the run (`signal`'s options) and deliver what it dispatches."""
        answer = signal(saga_id, name, payload, **options)
        self.worker.drain()
        return answer

    def cancel(self, saga_id: str, reason: str = "cancelled by the test") -> SagaView:
        view = cancel(saga_id, reason=reason, who="test")
        self.worker.drain()
        return view

    def resume(self, saga_id: str, reason: str = "resumed by the test") -> SagaView:
        """Resume the compensation of a FAILED run (after `clear_faults`, say)."""
        view = resume(saga_id, reason=reason, who="test")
        self.worker.drain()
        return view

    def drain(self) -> None:
        """Deliver everything sent, and every retry due at the clock's now."""
        self.worker.drain()

    def sweep(self) -> SweepReport:
        """The sweeper's pass at the clock's now (waits' and steps' deadlines), then deliver."""
        report = sweep(self.rt)
        self.worker.drain()
        return report

    def advance(self, by: float | timedelta) -> None:
        """Move the clock by `by` (seconds or a timedelta), in one jump, then do what is due: the
        retries whose backoff ended, the sweeper's deadlines (a wait's, a step's), what they send."""
        self.clock.advance(by)
        self.worker.drain()
        for _ in range(10):  # a sweep may make more due work (a wait timed out: its compensations)
            if not any(self.sweep().counts().values()):
                return

    def settle(self, limit: float | timedelta = timedelta(hours=1)) -> None:
        """Deliver, moving the clock to each waiting retry's ETA, until no retry waits (the runs
        ended, or are parked on a wait). At most `limit` of virtual time; a wait's deadline is not
        crossed unless it falls before a retry's (use `advance` for that)."""
        budget = limit if isinstance(limit, timedelta) else timedelta(seconds=limit)
        self.worker.drain()
        while (gap := self.worker.next_eta()) is not None:
            if gap > budget:
                raise AssertionError(f"a retry is due in {gap}, past the {limit} this settle may skip")
            budget -= gap
            self.clock.advance(gap)
            self.worker.drain()

    # ------------------------------------------------------------ faults

    def fail(self, name: str, *, times: int | None = None, permanent: bool = False,
             error: BaseException | type[BaseException] | None = None, after: bool = False,
             side: Side = "action") -> Fault:
        """Make step task (or step) `name` fail: the next `times` calls (every call if None).

        By default the error is transient (retried as the step's policy says); `permanent=True`
        raises a `PermanentError` (never retried); `error=` raises that exception (its class or an
        instance: the policy's `non_retryable` decides). `after=True`: the function runs first (its
        effect happened), then the call fails. `side="compensation"` fails the compensation."""
        return self._arm(name, side, Fault(name, side, "fail", times, error, permanent, after))

    def time_out(self, name: str, *, times: int | None = None, after: bool = False,
                 side: Side = "action") -> Fault:
        """Make step task (or step) `name` exceed its time limit, as a worker's soft time limit
        would: the next `times` calls (every call if None). The action is TIMED_OUT (compensated as
        one that may have happened); a compensation's time-out is a failed attempt, retried."""
        return self._arm(name, side, Fault(name, side, "time_out", times, after=after))

    def clear_faults(self) -> None:
        self.worker.faults.clear()

    def _arm(self, name: str, side: Side, fault: Fault) -> Fault:
        if side not in ("action", "compensation"):
            raise ValueError(f"side must be 'action' or 'compensation' (got {side!r})")
        if step_tasks.get(name) is None and not any(s.plan.find(name) for s in registry.definitions()):
            raise DefinitionError(f"no step task and no step of a registered saga is named {name!r}: name a task "
                                  "like 'payment.charge' or a step like 'process_payment'")
        return self.worker.faults.arm(fault)

    # ------------------------------------------------------------ read

    def view(self, saga_id: str) -> SagaView:
        """The run as `get_saga` shows it: steps, events, signals, children."""
        return self.rt.store.get(saga_id)

    def state(self, saga_id: str) -> str:
        return self.view(saga_id).state

    def history(self, saga_id: str, step: str | None = None) -> list[str]:
        """The run's recorded event types, oldest first (of one step if `step`)."""
        return self.view(saga_id).event_types(step)

    def calls(self, saga_id: str | None = None, *, side: Side | None = None) -> list[Call]:
        """Every call of a step function, in order (of one run; of one side)."""
        return [c for c in self.worker.calls
                if (saga_id is None or c.saga_id == saga_id) and (side is None or c.kind == side)]

    def actions(self, saga_id: str | None = None) -> list[Call]:
        return self.calls(saga_id, side="action")

    def compensations(self, saga_id: str | None = None) -> list[Call]:
        """Every call of a compensation, in order, each with what it received (`received`: the
        action's result; `error`: the action's error), failed attempts included (`ok` is False)."""
        return self.calls(saga_id, side="compensation")

    def compensated(self, saga_id: str | None = None) -> list[str]:
        """The steps whose compensation succeeded, in the order they did."""
        return [c.step for c in self.compensations(saga_id) if c.ok]
