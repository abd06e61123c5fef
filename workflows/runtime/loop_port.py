"""The decision loop as its step helpers see it (`hand_on`, `redelivery`, `recovery`).

A Protocol, so those modules need not import `runtime.loop`, which calls them: `DecisionLoop`
is the one implementation.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from workflows.core.definition import Saga, SagaRegistry
from workflows.core.state import Command, Dispatch, MessageInfo, Order, Outcome, RunState
from workflows.store.base import Recorder


class LoopPort(Protocol):
    @property
    def store(self) -> Recorder: ...

    @property
    def definitions(self) -> SagaRegistry:
        """Where a run's definition comes from (`definition_of`)."""
        ...

    @property
    def clock(self) -> Callable[[], datetime]: ...

    def apply(self, saga: Saga, saga_id: str, outcome: Outcome, *, by: str, dispatch: Dispatch | None = None,
              state: RunState | None = None, message: MessageInfo | None = None) -> object:
        """Decide, commit and publish `outcome` (`DecisionLoop.apply`)."""
        ...

    def republish(self, saga: Saga, run: RunState, *,
                  select: Callable[[Sequence[Command]], Sequence[Command]] | None = None) -> Sequence[Command]:
        """Publish again the messages `run` waits on (`select`ed), derived from its state."""
        ...

    def deliver(self, order: Order, *, by: str) -> object:
        """Apply an order for another run (`DecisionLoop.deliver`)."""
        ...
