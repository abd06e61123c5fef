"""A saga's plan: its nodes compiled once, when the saga is declared.

Each node of the plan knows its stage, its kind (a task step, a wait, a child saga) and its
policies per side (the task, retry policy and time limit of its action and of its compensation).
The declarations are matched on their type here and only here: the engine reads the plan, and
asks a node's kind only where a stage starts, where compensation walks back, and on a cancel.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workflows.core.child import Child
from workflows.core.errors import DefinitionError
from workflows.core.nodes import ForEach, Parallel, Step
from workflows.core.retry import RetryPolicy
from workflows.core.run import Side
from workflows.core.wait import Wait

Node = Step | Parallel | ForEach | Wait | Child
"""What a saga is a sequence of."""


class Kind(enum.Enum):
    """What a row of a run is: a task step (a fan-out's branch is one too), a wait, a child saga."""

    STEP = "step"
    WAIT = "wait"
    CHILD = "child"


@dataclass(frozen=True)
class SidePolicy:
    """How one side of a task step runs: its task, its retry policy, its time limit per attempt."""

    task: str
    retry: RetryPolicy
    timeout: float


@dataclass(frozen=True, eq=False)
class PlanNode:
    """One row's node: its stage, its kind, its declaration and its policies per side. A side
    with no message (a wait's, a child's, a step declaring no compensation) has no policy."""

    name: str
    stage: int
    kind: Kind
    declared: Step | Wait | Child
    policies: Mapping[Side, SidePolicy] = field(default_factory=dict)
    fan_out: ForEach | None = None
    """The fan-out a step's branches come from (its rows are `<name>-<i>`)."""
    undoes_failure: bool = False
    """A task step declaring `compensate_failure`: its action failing for good may have acted, so
    it is compensated too (the compensation walker reads it)."""

    def policy(self, side: Side) -> SidePolicy | None:
        """The policy of `side`, or None when that side sends no message."""
        return self.policies.get(side)

    @property
    def undoable(self) -> bool:
        """Has it something to compensate with? A child has its own compensations; a wait has no effect."""
        return self.kind is Kind.CHILD or Side.COMPENSATION in self.policies


def _step_node(st: Step, stage: int, fan_out: ForEach | None = None) -> PlanNode:
    policies = {Side.ACTION: SidePolicy(st.action_name, st.retry, st.timeout)}
    if st.compensation_name is not None:
        policies[Side.COMPENSATION] = SidePolicy(st.compensation_name, st.compensation_retry,
                                                 st.effective_compensation_timeout)
    return PlanNode(st.name, stage, Kind.STEP, st, policies, fan_out, undoes_failure=st.compensate_failure)


class Plan:
    """The compiled nodes of one saga: every row's `PlanNode` by name, its fan-outs and waits."""

    def __init__(self, saga: str, stages: Sequence[Node]) -> None:
        self.saga = saga
        self.stages = tuple(stages)
        self._named: dict[str, PlanNode] = {}
        self._fan_outs: dict[str, PlanNode] = {}
        names: list[str] = []
        for stage, node in enumerate(self.stages):
            match node:
                case Step() | Wait() | Child():
                    names.append(node.name)
                    self._add(node, stage)
                case Parallel():
                    names += [node.name, *(st.name for st in node.steps)]
                    for st in node.steps:
                        self._add(st, stage)
                case ForEach():
                    names.append(node.name)
                    self._fan_outs[node.name] = _step_node(node.step, stage, node)
                case _:
                    raise DefinitionError(f"saga {saga!r}: {node!r} is not a Step, Parallel, ForEach, Wait or Child")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"saga {saga!r}: step and group names must be unique, repeated: {dupes}")
        for fan in self._fan_outs:
            clash = [n for n in names if n.startswith(f"{fan}-")]
            if clash:
                raise DefinitionError(f"saga {saga!r}: {clash} would clash with the branches of ForEach "
                                      f"{fan!r} ({fan}-0, {fan}-1, ...): rename")

    def _add(self, node: Step | Wait | Child, stage: int) -> None:
        match node:
            case Step():
                self._named[node.name] = _step_node(node, stage)
            case Wait():
                self._named[node.name] = PlanNode(node.name, stage, Kind.WAIT, node)
            case Child():
                self._named[node.name] = PlanNode(node.name, stage, Kind.CHILD, node)

    def find(self, name: str) -> PlanNode | None:
        """The node of row `name` (a fan-out's branch `<step>-<i>`: its step's), or None."""
        found = self._named.get(name)
        if found is not None:
            return found
        prefix, _, index = name.rpartition("-")
        fan = self._fan_outs.get(prefix)
        return fan if fan is not None and index.isdigit() else None

    def node(self, name: str) -> PlanNode:
        """The node of row `name`, or `DefinitionError` if the saga has no such row."""
        found = self.find(name)
        if found is None:
            raise DefinitionError(f"saga {self.saga!r} has no step {name!r}")
        return found

    def branch(self, name: str) -> tuple[ForEach | None, int]:
        """(the fan-out, the index) of branch `name`; (None, -1) for any other row."""
        prefix, _, index = name.rpartition("-")
        fan = self._fan_outs.get(prefix)
        if fan is None or not index.isdigit():
            return None, -1
        return fan.fan_out, int(index)

    @property
    def fan_outs(self) -> list[ForEach]:
        return [n.fan_out for n in self._fan_outs.values() if n.fan_out is not None]

    @property
    def task_steps(self) -> list[Step]:
        """Every task step (a fan-out's step once), in stage order."""
        nodes = sorted([*self._named.values(), *self._fan_outs.values()], key=lambda n: n.stage)
        return [n.declared for n in nodes if isinstance(n.declared, Step)]

    @property
    def waits(self) -> list[Wait]:
        """Every wait, in stage order."""
        return [n.declared for n in self._named.values() if isinstance(n.declared, Wait)]

    def waits_for(self, signal: str) -> list[Wait]:
        """The waits on `signal`, in stage order."""
        return [w for w in self.waits if w.signal == signal]

    def children_of(self, stage: int) -> list[Child]:
        """The child steps of stage `stage`."""
        return [n.declared for n in self._named.values() if n.stage == stage and isinstance(n.declared, Child)]
