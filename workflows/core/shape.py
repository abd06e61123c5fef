"""The shape of a saga version: what a fingerprint covers, and what changed between two shapes.

A run is driven to its end by the version it started with (`RunState.saga_version`). The shape of
a version is what such a run depends on: its stages in order, each step's name, action and
compensation (and `compensate_failure`, when set), the groups and fan-outs. Retry policies,
timeouts and the input model are not part of it: they may be tuned in place. Registering another
shape under a version already registered (in the process, or recorded by a worker in the
database) is a `VersionConflict`. Pure.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

Shape = list[dict[str, Any]]


def _step(st: Any) -> dict[str, Any]:
    out = {"step": st.name, "action": st.action_name, "compensation": st.compensation_name}
    if getattr(st, "compensate_failure", False):  # only when set: the shapes declared before it keep their fingerprint
        out["compensate_failure"] = True
    return out


def shape_of(nodes: Sequence[Any]) -> Shape:
    """A saga's stages (`Saga.steps`: steps, `Parallel` groups, `ForEach` fan-outs, waits, child
    sagas) as JSON values, what `fingerprint_of` hashes. Read by their attributes: this module
    imports no declaration."""
    out: Shape = []
    for node in nodes:
        if hasattr(node, "max_items"):  # ForEach
            out.append({"for_each": node.name, "step": _step(node.step), "max_items": node.max_items})
        elif hasattr(node, "action"):  # Step
            out.append(_step(node))
        elif hasattr(node, "steps"):  # Parallel (of steps and child sagas)
            out.append({"parallel": node.name, "steps": [_step(st) if hasattr(st, "action") else _child(st)
                                                         for st in node.steps]})
        elif hasattr(node, "signal"):  # Wait
            out.append({"wait": node.name, "name": node.name, "signal": node.signal,
                        "on_timeout": node.on_timeout if isinstance(node.on_timeout, str) else "go on"})
        elif hasattr(node, "saga_name"):  # Child
            out.append(_child(node))
        else:  # a kind of node this module does not know yet: its kind and name at least
            out.append({"node": type(node).__name__, "name": getattr(node, "name", repr(node))})
    return out


def _child(node: Any) -> dict[str, Any]:
    """A child step: its name and the saga it starts (the child's own versions pin its shape)."""
    pinned = getattr(node, "version", None)  # a named child pinned to a version (not fingerprinted otherwise)
    return {"step": node.name, "child": node.saga_name, **({"version": pinned} if pinned is not None else {})}


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
        for attr in ("action", "compensation", "compensate_failure"):
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
