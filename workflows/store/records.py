"""The plain records the store's interfaces (`workflows.store.base`) take and return: queries,
pages, counts, links. Frozen dataclasses, no ORM rows; `input_hash` is what an idempotency key is
bound to."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from workflows.core.sealed import stable
from workflows.core.views import DeadLetterView

CallerTx = Session | Connection
"""The caller's transaction (`workflows.store.joined`): an ORM `Session` or a Core `Connection`."""


@dataclass(frozen=True)
class Created:
    """What `SagaStore.create_run` did."""

    saga_id: str
    created: bool
    """False: the idempotency key named a run that exists (returned as is; nothing to publish)."""


@dataclass(frozen=True)
class RunCounts:
    """Runs of one saga type in one state (metrics)."""

    saga_type: str
    state: str
    count: int


@dataclass(frozen=True)
class StepRetries:
    """Attempts beyond the first of one step of one saga type, actions and compensations (metrics)."""

    saga_type: str
    step: str
    actions: int
    compensations: int
    redeliveries: int = 0
    """Deliveries after a lost worker, of the actions (`saga_steps.redeliveries`)."""
    compensation_redeliveries: int = 0


@dataclass(frozen=True)
class ChildLink:
    """A parent's child step still waiting, and its child run (the sweeper's recovery of children)."""

    parent_id: str
    parent_type: str
    parent_state: str
    step: str
    step_status: str
    child_id: str
    child_type: str
    child_state: str


@dataclass(frozen=True)
class StepDuration:
    saga_type: str
    step: str
    seconds: float


@dataclass(frozen=True)
class SagaQuery:
    """The console's saga list: every filter given must hold."""

    state: str | None = None
    saga_type: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    stuck_at: datetime | None = None
    """Only runs not terminal with a deadline passed at this moment (a step's or the saga's)."""
    open_dead_letters: bool = False
    """Only runs with at least one OPEN dead letter."""
    search: str | None = None
    """A saga id, an idempotency key, or the value of one of `search_keys` in the run's input."""
    search_keys: tuple[str, ...] = ("order_id",)
    """Top-level input fields the search looks in (business keys)."""
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class SagaSummary:
    """One row of the console's saga list (no steps, no history)."""

    id: str
    saga_type: str
    style: str
    state: str
    idempotency_key: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    open_dead_letters: int


@dataclass(frozen=True)
class SagaSummaryPage:
    items: list[SagaSummary]
    total: int
    by_state: dict[str, int]
    """Runs per state under the query's filters but its state."""


@dataclass
class ActivityBucket:
    """Runs started and ended in one slot of the console's activity chart."""

    start: datetime
    started: int = 0
    completed: int = 0
    compensated: int = 0
    failed: int = 0


@dataclass(frozen=True)
class DeadLetterQuery:
    status: str | None = "OPEN"
    saga_type: str | None = None
    step: str | None = None
    kind: str | None = None
    saga_id: str | None = None
    limit: int = 50
    offset: int = 0
    oldest_first: bool = False


@dataclass(frozen=True)
class DeadLetterPage:
    items: list[DeadLetterView]
    saga_types: dict[str, str] = field(default_factory=dict)
    """The saga type of each dead letter's run, by dead-letter id (none for a message no run took)."""
    total: int = 0


@dataclass(frozen=True)
class DeadLetterGroup:
    """OPEN dead letters of one step of one saga type: what a bulk redrive takes at once."""

    saga_type: str
    step: str
    kind: str
    count: int


@dataclass(frozen=True)
class RecordedDefinition:
    saga_type: str
    saga_version: int
    fingerprint: str
    shape: list[Any]


@dataclass(frozen=True)
class VersionCount:
    """Runs of one version of one saga type in one state."""

    saga_type: str
    saga_version: int
    state: str
    count: int


@dataclass(frozen=True)
class ParkedStep:
    """A step message a worker dropped after handing it on `MAX_HANDOFFS` times."""

    saga_id: str
    task_id: str
    saga_type: str
    saga_version: int
    step: str
    kind: str


def input_hash(saga_type: str, data: dict[str, Any]) -> str:
    """What an idempotency key is bound to: the saga type and its input. A sealed field counts by
    its keyed `mac` (`core.sealed.stable`), not its ciphertext: the same clear value sealed again
    (a new nonce, a rotated key) hashes the same, and the hash is never a plain hash of the value."""
    blob = json.dumps([saga_type, stable(data)], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
