"""Moving a run to a newer version of its saga: when it is compatible, and the transition. Pure:
no Celery, no SQL, no clock. (Shapes and fingerprints are in `core.shape`.)"""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Protocol

from workflows.core.definition import Saga
from workflows.core.decision import Decision  # the engine's dispatch rules, reused as they are
from workflows.core.errors import IncompatibleVersion
from workflows.core.state import IdSource, RunState, RunStatus, Side, StepStatus, Timing, Transition

# ---------------------------------------------------------------- moving a run to another version

_STARTED = (StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING,
            StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
"""Steps whose compensation a run may still run or has run (a FAILED action had no effect)."""


class StepSides(Protocol):
    """What moving reads of a step of the old version: its tasks (a `Step`)."""

    @property
    def action_name(self) -> str: ...

    @property
    def compensation_name(self) -> str | None: ...


class Declarations(Protocol):
    """The old version as moving reads it: a `Saga`, or its shape as recorded in the database."""

    def step(self, name: str) -> StepSides: ...


def incompatibility(run: RunState, old: Declarations, new: Saga) -> str | None:
    """Why `run` (on `old`) cannot continue on `new`, or None when it can: the new version has the
    same step rows for the run's input, in the same order, and every step that has started keeps
    its compensation (and, while in flight, its action)."""
    if new.name != run.saga_type:
        return f"version {new.version} is of saga {new.name!r}, the run is a {run.saga_type!r}"
    if new.version <= run.saga_version:
        return f"the run is on version {run.saga_version}: it can only move to a newer one"
    try:
        rows = [name for name, _ in new.rows(run.input)]
    except Exception as e:  # the new version reads its fan-out's items otherwise
        return f"version {new.version} cannot read the run's input: {e}"
    have = [s.name for s in run.steps]
    if rows != have:
        return (f"version {new.version} has the steps {rows}, the run has {have}: a run keeps its step rows, "
                "so only versions with the same steps in the same order are compatible")
    for s in run.steps:
        if s.status not in _STARTED:
            continue
        before, after = old.step(s.name), new.step(s.name)
        if before.compensation_name != after.compensation_name:
            return (f"step {s.name!r} is {s.status.value} and its compensation would change from "
                    f"{before.compensation_name!r} to {after.compensation_name!r}")
        if s.status == StepStatus.RUNNING and before.action_name != after.action_name:
            return (f"step {s.name!r} is in flight and its action would change from {before.action_name!r} "
                    f"to {after.action_name!r}")
    return None


MIGRATABLE = (RunStatus.RUNNING, RunStatus.COMPENSATING, RunStatus.FAILED)


def migrate(run: RunState, old: Saga, new: Saga, now: datetime, ids: IdSource, who: str, reason: str,
            timing: Timing = Timing()) -> Transition:
    """The transition that moves `run` from `old` to `new`: the run's `saga_version` changes, and
    every step in flight is dispatched again under `new` (a new task id: the message of the old
    version, wherever it is, is stale). A FAILED run stays FAILED (resume it on its new version).
    Raises `IncompatibleVersion` with the reason when it cannot move."""
    if run.status not in MIGRATABLE:
        raise IncompatibleVersion(f"saga {run.saga_id} is {run.status.value}: only a RUNNING, COMPENSATING "
                                  "or FAILED run can move to another version")
    if old.version != run.saga_version:
        raise IncompatibleVersion(f"saga {run.saga_id} is on version {run.saga_version}, not {old.version}")
    why = incompatibility(run, old, new)
    if why is not None:
        raise IncompatibleVersion(f"saga {run.saga_id} cannot move to version {new.version}: {why}")
    moved = replace(run, saga_version=new.version)
    d = Decision(new, moved, now, ids, timing)
    d._emit("SagaMigrated", None, None, from_version=old.version, to_version=new.version,
            from_fingerprint=old.fingerprint, to_fingerprint=new.fingerprint, who=who, reason=reason)
    for s in list(d.steps):
        if s.status == StepStatus.RUNNING and run.status == RunStatus.RUNNING:
            d._dispatch(s, Side.ACTION)
        elif s.status == StepStatus.COMPENSATING:
            d._dispatch(s, Side.COMPENSATION)
    return replace(d.transition(), before=run)
