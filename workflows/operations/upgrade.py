"""The upgrade check: before a deploy, which runs in flight the code being deployed can drive to
their end, which it would strand, and how a move to the newest version would change the others.

    report = check_upgrade(store)          # the definitions and step tasks this process registered
    if not report.ok: sys.exit(1)          # `sagas check-upgrade` does this

For every saga type and version with runs not terminal (RUNNING, WAITING, COMPENSATING, SCHEDULED),
each run is:

- **drivable** when this code registers its version (`definition_of(run)`) and every task the run
  may still send: the action of each step not finished, the compensation of each step that may
  still need one (a `@step_task` of that name), and the saga of each child step not started;
- **stranded** otherwise, with the reasons (the version is no longer registered; the task of a
  step's action or compensation is registered by no `@step_task`; a child's saga by no saga).

A run on a version older than the newest is also checked against the newest with the rules of
the operator's move (`core.versions.incompatibility`, as `sagas move` applies them): refused with
the reason, or a plan diff, how its remaining steps and its compensation plan (newest first)
would change. A version no longer registered is read from the shape a worker recorded in the
database (`saga_definitions`). Reads only: nothing is written.
"""
from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from workflows.core.definition import Saga, registry as default_registry
from workflows.core.errors import SagaError
from workflows.core.plan import Kind
from workflows.core.registry import SagaRegistry
from workflows.core.run import RunState, Side, StepState, StepStatus
from workflows.core.steps import StepTaskRegistry, step_tasks as default_tasks
from workflows.core.versions import MIGRATABLE, Declarations, StepSides, incompatibility
from workflows.core.views import SagaView
from workflows.store.records import RecordedDefinition, VersionCount


IN_FLIGHT = ("RUNNING", "WAITING", "COMPENSATING", "SCHEDULED")
"""The states of a run not terminal."""
PAGE = 500


class UpgradeReads(Protocol):
    """What the check reads of the store (a `SagaStore` has all of it)."""

    def version_counts(self, *, active_only: bool = False) -> builtins.list[VersionCount]: ...

    def recorded_definitions(self) -> builtins.list[RecordedDefinition]: ...

    def list(self, *, state: str | None = None, saga_type: str | None = None,
             limit: int = 50, offset: int = 0) -> tuple[builtins.list[SagaView], int]: ...

    def load(self, saga_id: str) -> RunState: ...


@dataclass(frozen=True)
class PlanDiff:
    """How a run's plan changes if it moves to `to_version`: its remaining steps (action tasks)
    and its compensation plan (newest first: what would run if it failed now), before and after."""

    to_version: int
    remaining_before: list[str]
    remaining_after: list[str]
    compensation_before: list[str]
    compensation_after: list[str]

    @property
    def changes(self) -> list[str]:
        """Each entry that differs, as 'before → after' (empty: the move changes no task)."""
        return [f"{a} → {b}" for a, b in zip(self.remaining_before + self.compensation_before,
                                             self.remaining_after + self.compensation_after) if a != b]

    def to_dict(self) -> dict[str, Any]:
        return {"to_version": self.to_version, "remaining_before": self.remaining_before,
                "remaining_after": self.remaining_after, "compensation_before": self.compensation_before,
                "compensation_after": self.compensation_after, "changes": self.changes}


@dataclass(frozen=True)
class RunCheck:
    """One run in flight: can this code drive it to its end, and what would a move do."""

    saga_id: str
    saga_type: str
    saga_version: int
    state: str
    stranded_by: list[str] = field(default_factory=list)
    """Why this code cannot drive the run to its end (empty: it can)."""
    move: PlanDiff | None = None
    """The plan diff of a move to the newest version, when the move's rules allow it."""
    move_refused: str | None = None
    """Why it cannot move to the newest version (None: it can, or it is on the newest)."""

    @property
    def drivable(self) -> bool:
        return not self.stranded_by

    def to_dict(self) -> dict[str, Any]:
        return {"saga_id": self.saga_id, "saga_type": self.saga_type, "saga_version": self.saga_version,
                "state": self.state, "drivable": self.drivable, "stranded_by": self.stranded_by,
                "move": self.move.to_dict() if self.move else None, "move_refused": self.move_refused}


@dataclass(frozen=True)
class VersionCheck:
    """The runs in flight of one version of one saga."""

    saga_type: str
    saga_version: int
    registered: bool
    newest: int | None
    """The newest version this code registers of the saga (None: none)."""
    runs: list[RunCheck]

    def to_dict(self) -> dict[str, Any]:
        return {"saga_type": self.saga_type, "saga_version": self.saga_version, "registered": self.registered,
                "newest": self.newest, "runs": [r.to_dict() for r in self.runs]}


@dataclass(frozen=True)
class UpgradeReport:
    versions: list[VersionCheck]

    @property
    def runs(self) -> list[RunCheck]:
        return [r for v in self.versions for r in v.runs]

    @property
    def stranded(self) -> list[RunCheck]:
        return [r for r in self.runs if not r.drivable]

    @property
    def ok(self) -> bool:
        """No run in flight would be stranded."""
        return not self.stranded

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "runs": len(self.runs), "stranded": [r.saga_id for r in self.stranded],
                "versions": [v.to_dict() for v in self.versions]}


def check_upgrade(store: UpgradeReads, registry: SagaRegistry = default_registry,
                  tasks: StepTaskRegistry = default_tasks) -> UpgradeReport:
    """The report for every saga version with runs in flight in `store`, against the definitions
    of `registry` and the step tasks of `tasks` (this process's, by default)."""
    active = sorted({(c.saga_type, c.saga_version) for c in store.version_counts(active_only=True)
                     if c.state in IN_FLIGHT and c.count > 0})
    recorded = {(d.saga_type, d.saga_version): d.shape for d in store.recorded_definitions()}
    runs = _runs_in_flight(store, {t for t, _ in active})
    out = []
    for saga_type, version in active:
        here = registry.has(saga_type, version)
        newest = registry.newest(saga_type) if saga_type in registry else None
        old: Declarations | None = registry.get(saga_type, version) if here else (
            RecordedSteps(recorded[(saga_type, version)]) if (saga_type, version) in recorded else None)
        checks = [_check(run, registry, tasks, old, newest) for run in runs.get((saga_type, version), [])]
        out.append(VersionCheck(saga_type, version, here, newest.version if newest else None, checks))
    return UpgradeReport(out)


def _runs_in_flight(store: UpgradeReads, types: set[str]) -> dict[tuple[str, int], list[RunState]]:
    out: dict[tuple[str, int], list[RunState]] = {}
    for saga_type in sorted(types):
        for state in IN_FLIGHT:
            offset = 0
            while True:
                page, total = store.list(state=state, saga_type=saga_type, limit=PAGE, offset=offset)
                for view in page:
                    if view.style == "orchestrated":
                        run = store.load(view.id)
                        out.setdefault((run.saga_type, run.saga_version), []).append(run)
                offset += PAGE
                if offset >= total or not page:
                    break
    return out


def _check(run: RunState, registry: SagaRegistry, tasks: StepTaskRegistry, old: Declarations | None,
           newest: Saga | None) -> RunCheck:
    if registry.has(run.saga_type, run.saga_version):
        stranded = _missing(run, registry.get(run.saga_type, run.saga_version), registry, tasks)
    else:
        have = ", ".join(map(str, registry.versions(run.saga_type))) or "none"
        stranded = [f"version {run.saga_version} of saga {run.saga_type!r} is no longer registered "
                    f"(registered: {have})"]
    move, refused = None, None
    if newest is not None and newest.version > run.saga_version:
        refused = _refusal(run, old, newest)
        if refused is None and old is not None:
            move = plan_diff(run, old, newest)
    return RunCheck(run.saga_id, run.saga_type, run.saga_version, run.status.value, stranded, move, refused)


def _refusal(run: RunState, old: Declarations | None, new: Saga) -> str | None:
    """Why the operator's move (`sagas move`) would refuse `run`, by its own rules, or None."""
    if run.status not in MIGRATABLE:
        return (f"a {run.status.value} run cannot be moved (only {', '.join(s.value for s in MIGRATABLE)}); "
                "keep its version registered until it is one of those or ends")
    if old is None:
        return (f"version {run.saga_version} is neither registered here nor recorded in the database: "
                "its steps are unknown")
    try:
        return incompatibility(run, old, new)
    except SagaError as e:  # a row the move's rules do not compare (a wait's, a child's)
        return f"cannot compare: {e}"


def _needs_action(s: StepState) -> bool:
    return s.status in (StepStatus.PENDING, StepStatus.RUNNING)


def _needs_compensation(s: StepState, undoes_failure: bool) -> bool:
    """A step whose compensation may still be sent (now or if the run fails later)."""
    if s.status == StepStatus.FAILED:
        return undoes_failure
    return s.status != StepStatus.COMPENSATED


def _missing(run: RunState, saga: Saga, registry: SagaRegistry, tasks: StepTaskRegistry) -> list[str]:
    """The tasks and child sagas `run` may still need that this code does not register."""
    out: list[str] = []
    for s in run.steps:
        node = saga.plan.node(s.name)
        if node.kind is Kind.CHILD and s.status == StepStatus.PENDING:
            child = saga.child(s.name)
            assert child is not None
            try:
                registry.child_definition(child)
            except SagaError as e:
                out.append(f"step {s.name!r}: its child saga is gone ({e})")
        if node.kind is not Kind.STEP:
            continue
        for side, needed in ((Side.ACTION, _needs_action(s)),
                             (Side.COMPENSATION, _needs_compensation(s, node.undoes_failure))):
            policy = node.policy(side)
            if needed and policy is not None and tasks.get(policy.task) is None:
                out.append(f"step {s.name!r}: its {side.value} task {policy.task!r} is registered by no @step_task")
    return out


def plan_diff(run: RunState, old: Declarations, new: Saga) -> PlanDiff:
    """How `run`'s remaining steps and its compensation plan change from `old` to `new`."""
    def remaining(d: Declarations) -> list[str]:
        return [f"{s.name}: {_task(d, s.name, Side.ACTION)}" for s in run.steps if _needs_action(s)]

    def compensations(d: Declarations) -> list[str]:
        return [f"{s.name}: {_task(d, s.name, Side.COMPENSATION)}" for s in reversed(run.steps)
                if _needs_compensation(s, _undoes_failure(d, s.name))]

    return PlanDiff(new.version, remaining(old), remaining(new), compensations(old), compensations(new))


def _sides(d: Declarations, name: str) -> StepSides | None:
    try:
        return d.step(name)
    except (SagaError, KeyError):  # a wait or a child: no task of its own
        return None


def _task(d: Declarations, name: str, side: Side) -> str:
    sides = _sides(d, name)
    if sides is None:
        return "(no task: a wait or a child saga)"
    task = sides.action_name if side is Side.ACTION else sides.compensation_name
    return task or "nothing to undo"


def _undoes_failure(d: Declarations, name: str) -> bool:
    return bool(getattr(_sides(d, name), "compensate_failure", False))


@dataclass(frozen=True)
class RecordedStep:
    """A step of a version as a worker recorded its shape."""

    action_name: str
    compensation_name: str | None
    compensate_failure: bool = False


class RecordedSteps:
    """A version no longer registered, read from its recorded shape (`core.shape`): its steps'
    tasks, by row name (a fan-out's branch `<step>-<i>` is its step's)."""

    def __init__(self, shape: Sequence[dict[str, Any]]) -> None:
        self._steps: dict[str, RecordedStep] = {}
        self._fan_outs: dict[str, RecordedStep] = {}
        for node in shape:
            if "for_each" in node:
                self._fan_outs[node["for_each"]] = _recorded(node["step"])
            for st in node.get("steps", [node]) if "parallel" in node else [node]:
                if "action" in st:
                    self._steps[st["step"]] = _recorded(st)

    def step(self, name: str) -> StepSides:
        found = self._steps.get(name)
        if found is None:
            prefix, _, index = name.rpartition("-")
            found = self._fan_outs.get(prefix) if index.isdigit() else None
        if found is None:
            raise KeyError(f"the recorded shape has no task step {name!r}")
        return found


def _recorded(st: dict[str, Any]) -> RecordedStep:
    return RecordedStep(st["action"], st.get("compensation"), bool(st.get("compensate_failure", False)))


__all__ = ["PlanDiff", "RecordedSteps", "RunCheck", "UpgradeReport", "VersionCheck", "check_upgrade", "plan_diff"]
