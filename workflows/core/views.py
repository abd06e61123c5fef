"""Read models returned by `get_saga`, `list_sagas` and the dead-letter operations."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


class _View:
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class StepView(_View):
    index: int
    name: str
    status: str
    attempts: int
    compensation_attempts: int
    result: dict[str, Any] | None
    error: str | None
    task_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    compensated_at: datetime | None
    deadline_at: datetime | None
    redeliveries: int = 0
    """Deliveries of an action message after its worker was lost (0 on a run without crashes)."""
    compensation_redeliveries: int = 0


@dataclass(frozen=True)
class EventView(_View):
    id: int
    at: datetime
    type: str
    step: str | None
    attempt: int | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class DeadLetterView(_View):
    id: str
    saga_id: str | None
    step: str | None
    kind: str
    task_name: str
    queue: str | None
    args: list[Any]
    kwargs: dict[str, Any]
    headers: dict[str, Any]
    attempts: int
    exception: str
    traceback: str
    status: str
    resolution: str | None
    created_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class SignalView(_View):
    """A signal sent to a run, and the wait that consumed it (None: kept for a wait not begun)."""

    id: str
    name: str
    payload: dict[str, Any]
    idempotency_key: str
    who: str
    received_at: datetime
    consumed_by: str | None
    consumed_at: datetime | None


@dataclass(frozen=True)
class Signalled(_View):
    """What `signal(...)` did: the signal as recorded, and the run's state after it."""

    saga_id: str
    signal: SignalView
    duplicate: bool
    """The key named a signal already recorded: nothing changed."""
    state: str


@dataclass(frozen=True)
class ChildView(_View):
    """A child run, as its parent's view lists it."""

    id: str
    saga_type: str
    state: str
    parent_step: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class SagaView(_View):
    id: str
    saga_type: str
    style: str
    state: str
    version: int
    input: dict[str, Any]
    idempotency_key: str | None
    failure_reason: str | None
    created_at: datetime
    updated_at: datetime
    deadline_at: datetime | None
    steps: list[StepView] = field(default_factory=list)
    events: list[EventView] = field(default_factory=list)
    dead_letters: list[DeadLetterView] = field(default_factory=list)
    signals: list[SignalView] = field(default_factory=list)
    parent_id: str | None = None
    """A child run: the run whose `Child` step started it."""
    parent_step: str | None = None
    children: list[ChildView] = field(default_factory=list)
    """The child runs this run's `Child` steps started (filled by `get`, not by `list`)."""
    saga_version: int = 1
    """The version of the saga's definition the run is driven by (`version` is the lock counter)."""

    @property
    def terminal(self) -> bool:
        return self.state in ("COMPLETED", "COMPENSATED", "FAILED")

    def step(self, name: str) -> StepView:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def event_types(self, step: str | None = None) -> list[str]:
        return [e.type for e in self.events if step is None or e.step == step]


@dataclass(frozen=True)
class WorkerView(_View):
    """A worker's last heartbeat: the saga versions it holds."""

    name: str
    versions: dict[str, dict[str, str]]
    """{saga name: {version: fingerprint}}."""
    started_at: datetime
    seen_at: datetime


@dataclass(frozen=True)
class VersionView(_View):
    """One version of one saga: its fingerprint, its runs by state, and who holds it."""

    saga_type: str
    saga_version: int
    fingerprint: str | None
    """As registered in this process, or as recorded by a worker (None: neither knows it)."""
    runs: dict[str, int]
    """Runs on this version, by state."""
    workers: list[str]
    """Live workers holding this version."""
    registered_here: bool

    @property
    def active(self) -> int:
        """Runs on it that are not terminal (a version can be retired when this is 0)."""
        return sum(n for state, n in self.runs.items() if state not in ("COMPLETED", "COMPENSATED", "FAILED"))
