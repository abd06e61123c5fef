"""Saga declarations, one import path (kept for the code that imports it): the nodes (nodes.py,
wait.py, child.py), the saga and its compiled plan (saga.py, plan.py) and the registry
(registry.py) live in modules of their own."""
from __future__ import annotations

from workflows.core.child import Child, ChildInput, child_id
from workflows.core.names import REQUIRED, HasTaskName, task_name
from workflows.core.nodes import ForEach, ItemsOf, Parallel, Step
from workflows.core.plan import Kind, Node, Plan, PlanNode, SidePolicy
from workflows.core.registry import RunOf, SagaRegistry, child_definition, definition_of, register_saga, registry
from workflows.core.saga import ChildDefinitions, Saga, declared_child
from workflows.core.wait import TIMEOUT_ACTIONS, OnEvent, Wait

__all__ = [
    "REQUIRED", "TIMEOUT_ACTIONS", "Child", "ChildDefinitions", "ChildInput", "ForEach", "HasTaskName", "ItemsOf",
    "Kind", "Node", "OnEvent", "Parallel", "Plan", "PlanNode", "Saga", "SagaRegistry", "SidePolicy", "RunOf", "Step",
    "Wait",
    "child_definition", "child_id", "declared_child", "definition_of", "register_saga", "registry", "task_name",
]
