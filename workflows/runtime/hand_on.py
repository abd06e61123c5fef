"""Version hand-on: a step of a saga version this worker does not hold is never run, never
dead-lettered: it is handed on to the same queue, for a worker that holds it, or parked.

During a rolling deploy a queue is consumed by workers holding different versions of a saga.
The run's own version decides (not the message's): a worker without it sends the same message
again (same task id, `handoffs` one more) after `handoff_delay`; after `MAX_HANDOFFS` it parks
the step on the run's record (`saga_parked_steps` and a `StepParked` history row) and the
sweeper dispatches it again once a live worker holds its version.
"""
from __future__ import annotations

import logging

from workflows.core.state import HistoryEvent, RunState
from workflows.runtime.loop_port import LoopPort
from workflows.runtime.step_report import HandOn, StepReport
from workflows.store.base import ParkedStep

log = logging.getLogger("workflows.orchestration")

MAX_HANDOFFS = 20
"""Hand-offs of one message before it is parked: dropped, with a `saga_parked_steps` row and a
`StepParked` history row; the sweeper dispatches the step again once a live worker holds its version."""


def handoff_delay(handoffs: int) -> float:
    """Seconds before hand-off `handoffs + 1` is delivered: 0.5, 1, 1.5 ... at most 5."""
    return min(5.0, 0.5 * (handoffs + 1))


def hand_on(loop: LoopPort, run: RunState, report: StepReport) -> HandOn | None:
    """Hand `report`'s message on (the caller sends the `HandOn`), or park it after `MAX_HANDOFFS`
    (None). The first hand-off and the parking are in the run's history."""
    now = loop.clock()
    step, kind, task_id, handoffs = report.step, report.kind, report.delivery.task_id, report.handoffs
    detail = {"saga_version": run.saga_version, "kind": kind, "task_id": task_id,
              "worker_versions": loop.definitions.versions(run.saga_type), "handoffs": handoffs}
    extra = {"saga_id": run.saga_id, "step": step}
    if handoffs >= MAX_HANDOFFS:
        log.warning("step %s of %s version %d parked after %d hand-offs: no worker took it", step, run.saga_type,
                    run.saga_version, handoffs, extra=extra)
        loop.store.park_step(ParkedStep(run.saga_id, task_id, run.saga_type, run.saga_version, step, kind),
                             HistoryEvent("StepParked", step, None, detail), by=task_id, now=now)
        return None
    log.warning("step %s of %s version %d handed on: this worker holds versions %s", step, run.saga_type,
                run.saga_version, loop.definitions.versions(run.saga_type), extra=extra)
    if handoffs == 0:
        loop.store.record(run.saga_id, HistoryEvent("StepHandedOn", step, None, detail), by=task_id, now=now)
    kwargs = {**(report.delivery.kwargs or {}), "handoffs": handoffs + 1}
    return HandOn([run.saga_id, step], kwargs, handoff_delay(handoffs))
