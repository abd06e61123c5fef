"""Versions of a saga: the shape a fingerprint covers, what changed between two shapes, and
moving a run to a newer version. Pure: no Celery, no SQL, no clock.

A run is driven to its end by the version it started with (`RunState.saga_version`). The shape of
a version is what such a run depends on: its stages in order, each step's name, action and
compensation, the groups and fan-outs. Retry policies, timeouts and the input model are not part
of it: they may be tuned in place. Registering another shape under a version already registered
(in the process, or recorded by a worker in the database) is a `VersionConflict`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime
from typing import Any

from workflows.core.definition import Parallel, Saga, Step
from workflows.core.errors import IncompatibleVersion
from workflows.core.state import IdSource, RunState, RunStatus, StepStatus, Timing, Transition

Shape = list[dict[str, Any]]


def _step(st: Step) -> dict[str, Any]:
    return {"step": st.name, "action": st.action_name, "compensation": st.compensation_name}


def shape_of(saga: Saga) -> Shape:
    """The saga's stages as JSON values (what `fingerprint_of` hashes)."""
    out: Shape = []
    for node in saga.steps:
        if isinstance(node, Step):
            out.append(_step(node))
        elif isinstance(node, Parallel):
            out.append({"parallel": node.name, "steps": [_step(st) for st in node.steps]})
        else:
            out.append({"for_each": node.name, "step": _step(node.step), "max_items": node.max_items})
    return out


def fingerprint_of(shape: Shape) -> str:
    """The first 16 hex digits of the SHA-256 of the shape's canonical JSON."""
    blob = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flat(shape: Shape) -> dict[str, tuple[int, dict[str, Any], str | None]]:
    """step name → (stage, its step values, the group it is in)."""
    out: dict[str, tuple[int, dict[str, Any], str | None]] = {}
    for stage, node in enumerate(shape):
        if "step" in node and isinstance(node["step"], str):
            out[node["step"]] = (stage, node, None)
        elif "parallel" in node:
            for st in node["steps"]:
                out[st["step"]] = (stage, st, f"parallel group {node['parallel']!r}")
        elif "for_each" in node:
            out[node["for_each"]] = (stage, node["step"], "a ForEach")
        else:
            out[str(node.get("name"))] = (stage, node, None)
    return out


def describe_changes(old: Shape, new: Shape) -> list[str]:
    """What differs between two shapes, in words (empty: the same shape)."""
    a, b = _flat(old), _flat(new)
    changes: list[str] = []
    added = [n for n in b if n not in a]
    removed = [n for n in a if n not in b]
    if added:
        changes.append(f"steps added: {added}")
    if removed:
        changes.append(f"steps removed: {removed}")
    common_old = [n for n in a if n in b]
    common_new = [n for n in b if n in a]
    if common_old != common_new:
        changes.append(f"steps reordered: {common_old} became {common_new}")
    for name in common_old:
        (_, va, ga), (_, vb, gb) = a[name], b[name]
        for attr in ("action", "compensation"):
            if va.get(attr) != vb.get(attr):
                changes.append(f"step {name!r}: {attr} {va.get(attr)!r} became {vb.get(attr)!r}")
        if ga != gb:
            changes.append(f"step {name!r}: was in {ga or 'no group'}, is in {gb or 'no group'}")
    if not changes and old != new:
        changes.append("the groups or fan-out bounds differ")
    return changes


def conflict_message(name: str, version: int, old: Shape, new: Shape, where: str) -> str:
    changes = "; ".join(describe_changes(old, new)) or "the shape differs"
    return (f"saga {name!r} version {version} is already {where} with another shape ({changes}): "
            f"a changed saga needs a new version, Saga({name!r}, version={version + 1}, ...), "
            f"registered beside version {version} until no run is on it")


# ---------------------------------------------------------------- moving a run to another version

_STARTED = (StepStatus.RUNNING, StepStatus.SUCCEEDED, StepStatus.TIMED_OUT, StepStatus.COMPENSATING,
            StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)
"""Steps whose compensation a run may still run or has run (a FAILED action had no effect)."""


def incompatibility(run: RunState, old: Saga, new: Saga) -> str | None:
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
    from workflows.core.engine import _Decision  # the engine's dispatch rules, reused as they are

    if run.status not in MIGRATABLE:
        raise IncompatibleVersion(f"saga {run.saga_id} is {run.status.value}: only a RUNNING, COMPENSATING "
                                  "or FAILED run can move to another version")
    if old.version != run.saga_version:
        raise IncompatibleVersion(f"saga {run.saga_id} is on version {run.saga_version}, not {old.version}")
    why = incompatibility(run, old, new)
    if why is not None:
        raise IncompatibleVersion(f"saga {run.saga_id} cannot move to version {new.version}: {why}")
    moved = replace(run, saga_version=new.version)
    d = _Decision(new, moved, now, ids, timing)
    d._emit("SagaMigrated", None, None, from_version=old.version, to_version=new.version,
            from_fingerprint=old.fingerprint, to_fingerprint=new.fingerprint, who=who, reason=reason)
    for s in list(d.steps):
        if s.status == StepStatus.RUNNING and run.status == RunStatus.RUNNING:
            d._dispatch(s, "action")
        elif s.status == StepStatus.COMPENSATING:
            d._dispatch(s, "compensation")
    return replace(d.transition(), before=run)
