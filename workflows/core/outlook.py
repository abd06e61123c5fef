"""What comes next for a run: the steps still to run and the compensations that would run.

`compensation_plan` is the compensation walker's own reading of a state: the engine's walker
(`Decision._next_compensation`) acts on its first stage, and the views show all of it, so what
the console says would be undone is what the engine undoes. `outlook` is the view: for a running
run, the stages still to run and the plan if the steps in flight failed now; for a compensating
or failed run, the plan from where it is. Pure.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from workflows.core.plan import Plan
from workflows.core.run import RunState, RunStatus, StepState, StepStatus

IN_FLIGHT = (StepStatus.RUNNING, StepStatus.COMPENSATING)
MAY_HAVE_HAPPENED = (StepStatus.SUCCEEDED, StepStatus.TIMED_OUT)


@dataclass(frozen=True)
class CompensationStage:
    """One stage of a compensation plan, newest first. Immutable."""

    stage: int
    compensate: tuple[str, ...]
    """Its rows to compensate, together (a group's branches concurrently), once nothing blocks it."""
    waits_for: tuple[str, ...] = ()
    """Its rows still in flight (an action whose outcome is not in, a compensation running): waited for."""
    stuck: tuple[str, ...] = ()
    """Its rows whose compensation failed for good: the run stays FAILED here until an operator acts."""

    @property
    def blocked(self) -> bool:
        return bool(self.waits_for or self.stuck)


def may_have_happened(plan: Plan, s: StepState) -> bool:
    """Its action succeeded or timed out, or failed for good on a step declaring `compensate_failure`
    (it may have acted before failing)."""
    return s.status in MAY_HAVE_HAPPENED or (s.status == StepStatus.FAILED and plan.node(s.name).undoes_failure)


def compensation_plan(plan: Plan, steps: Sequence[StepState]) -> tuple[CompensationStage, ...]:
    """The compensations still to run from this state, newest stage first (stage order is
    completion order, immune to clock skew), each stage's rows together, assuming each succeeds.
    A stage is listed when it has something to compensate, to wait for or stuck. The walker acts
    on the first: waits if it is blocked, else compensates its rows; with none, the run is undone."""
    out = []
    for stage in reversed(range(len(plan.stages))):
        rows = [s for s in steps if plan.node(s.name).stage == stage]
        waits_for = tuple(s.name for s in rows if s.status in IN_FLIGHT)
        stuck = tuple(s.name for s in rows if s.status == StepStatus.COMPENSATION_FAILED)
        todo = tuple(s.name for s in rows if may_have_happened(plan, s) and plan.node(s.name).undoable)
        if waits_for or stuck or todo:
            out.append(CompensationStage(stage, todo, waits_for, stuck))
    return tuple(out)


@dataclass(frozen=True)
class Outlook:
    """What comes next for a run. Immutable."""

    status: RunStatus
    to_run: tuple[tuple[str, ...], ...]
    """A running run's stages still to run, in order: the rows of each (in flight or pending)."""
    compensations: tuple[CompensationStage, ...]
    """The compensations, newest stage first: for a running run, those that would run if the
    steps in flight failed now; for a compensating or failed run, those still to run."""
    hypothetical: bool
    """True when `compensations` is "if it failed now" (the run is not compensating)."""


_ACTIVE = (StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING)


def outlook(plan: Plan, run: RunState) -> Outlook:
    """What comes next for `run` (decided by `plan`, its own definition's)."""
    if run.status.terminal and run.status is not RunStatus.FAILED:
        return Outlook(run.status, (), (), False)
    if run.status in (RunStatus.COMPENSATING, RunStatus.FAILED):
        return Outlook(run.status, (), compensation_plan(plan, run.steps), False)
    to_run: dict[int, list[str]] = {}
    for s in run.steps:
        if s.status in _ACTIVE:
            to_run.setdefault(plan.node(s.name).stage, []).append(s.name)
    stages = tuple(tuple(to_run[k]) for k in sorted(to_run))
    # "if it failed now": every row in flight fails for good (a wait, a child, a step attempt)
    failed = [replace(s, status=StepStatus.FAILED) if s.status in (StepStatus.RUNNING, StepStatus.WAITING) else s
              for s in run.steps]
    return Outlook(run.status, stages, compensation_plan(plan, failed), True)


def describe(o: Outlook) -> dict[str, object]:
    """The outlook as JSON (the API's, the CLI's)."""
    return {"to_run": [list(stage) for stage in o.to_run],
            "compensations": [{"stage": c.stage, "compensate": list(c.compensate), "waits_for": list(c.waits_for),
                               "stuck": list(c.stuck)} for c in o.compensations],
            "if_failed_now": o.hypothetical}


__all__ = ["CompensationStage", "Outlook", "compensation_plan", "describe", "may_have_happened", "outlook"]
