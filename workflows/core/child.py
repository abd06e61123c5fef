"""A `Child` step: a node whose action is another saga, a run of its own. Pure: the definition
a child starts on is resolved by the caller (`SagaRegistry.child_definition`), never here."""
from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from workflows.core.errors import DefinitionError, InvalidInput
from workflows.core.names import NAME


class Definition(Protocol):
    """What a child step reads of the saga it starts (a `Saga`)."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def steps(self) -> tuple[Any, ...] | list[Any]: ...

    def first_children(self) -> list[Child]: ...

    def validate_input(self, data: Any, children: Callable[[Child], Any] = ...) -> dict[str, Any]: ...


Resolve = Callable[["Child"], Definition]
"""A caller's resolver of a child step to the definition its child starts on."""


ChildInput = Callable[[dict[str, Any], dict[str, dict[str, Any]]], Any]


@dataclass(frozen=True)
class Child:
    """A step whose action is another registered saga, a run of its own (the *child*).

    `input(data, results)` builds the child's input from the parent's input and the results of
    the stages before this one. The step succeeds when the child is COMPLETED (its result: the
    child's results, by step name) and fails when the child is COMPENSATED. Compensating this
    step compensates the COMPLETED child through the child's own compensations; cancelling the
    parent cancels a running child, and the parent waits until the child is settled. The child's
    id is derived from the parent's id and this step's name: starting it twice makes one run."""

    name: str
    saga: Definition | str
    """The child saga: a `Saga` value, or the name of a registered saga."""
    input: ChildInput = field(default=lambda data, results: data, compare=False)
    version: int | None = None
    """The version of a saga named by its name the child starts on; None: the newest registered when
    the child starts (a new run picks its version as `start_saga` does). A `Saga` value is its own."""
    input_name: str = field(default="", init=False)
    """The input function's qualified name: what equality compares (as `ForEach.items_name`)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME.match(self.name):
            raise DefinitionError(f"child step name {self.name!r} must be a plain name like 'ship'")
        target = self.saga if isinstance(self.saga, str) else getattr(self.saga, "name", None)
        if not isinstance(self.saga, str) and not hasattr(self.saga, "first_children"):
            target = None  # neither a name nor a saga
        if not isinstance(target, str) or not NAME.match(target):
            raise DefinitionError(f"child step {self.name!r}: saga must be a Saga or the name of a registered "
                                  f"saga like 'shipping' (got {self.saga!r})")
        if self.version is not None and (isinstance(self.version, bool) or not isinstance(self.version, int)
                                         or self.version < 1):
            raise DefinitionError(f"child step {self.name!r}: version must be an int >= 1 (got {self.version!r})")
        if not isinstance(self.saga, str) and self.version not in (None, self.saga.version):
            raise DefinitionError(f"child step {self.name!r}: version {self.version} is not the version of the "
                                  f"Saga given ({self.saga.version}): give one or the other")
        if not callable(self.input):
            raise DefinitionError(f"child step {self.name!r}: input must be a function (data, results) -> dict, "
                                  "like lambda data, results: {'order_id': data['order_id']}")
        object.__setattr__(self, "input_name", getattr(self.input, "__qualname__", repr(self.input)))

    @property
    def saga_name(self) -> str:
        return self.saga if isinstance(self.saga, str) else self.saga.name

    @property
    def declared(self) -> Definition | None:
        """The child saga when declared as a `Saga` value (None: named, the caller resolves it)."""
        return None if isinstance(self.saga, str) else self.saga

    def first_stage_cycle(self, parent: str, children: Resolve,
                          chain: tuple[str, ...] = ()) -> list[str] | None:
        """The saga names of a cycle of sagas that each start with a child step, back to a saga on
        the way from `parent` (starting it would never end), or None. `children` resolves each
        child step to its definition (the caller's)."""
        chain = (*chain, parent)
        if self.saga_name in chain:
            return [*chain, self.saga_name]
        for kid in children(self).first_children():
            cycle = kid.first_stage_cycle(self.saga_name, children, chain)
            if cycle is not None:
                return cycle
        return None

    def child_input(self, data: dict[str, Any], results: dict[str, dict[str, Any]],
                    child: Definition) -> dict[str, Any]:
        """The input of `child` (this step's definition), validated, or `InvalidInput` saying what
        is wrong (nothing is started)."""
        try:
            value = self.input(data, results)
        except Exception as e:  # the parent's input or results lack what the function reads
            raise InvalidInput(f"child step {self.name!r}: its input function failed "
                               f"({type(e).__name__}: {e})") from None
        return child.validate_input(value)


def child_id(parent_id: str, step: str) -> str:
    """The id of the child run step `step` of run `parent_id` starts: the same for every attempt to
    start it (a UUID of the parent's id and the step's name, so it fits the id column)."""
    return str(uuid.uuid5(_CHILDREN, f"{parent_id}/{step}"))


_CHILDREN = uuid.UUID("6f0c2f8e-5a57-4f7e-9a55-c41d0e1f0c11")
