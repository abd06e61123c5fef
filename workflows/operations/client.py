"""Starting and reading sagas: what a web app or script calls."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import kombu.exceptions

from workflows.core.definition import Saga, registry
from workflows.core.errors import SagaError, SagaNotFound, UnknownSaga
from workflows.core.outlook import Outlook, outlook
from workflows.core.registry import definition_of
from workflows.core.state import Transition
from workflows.core.views import SagaView
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.sealing import seal_input

if TYPE_CHECKING:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session

log = logging.getLogger("workflows.client")


def start_saga(saga: Saga | str, data: Any, *, idempotency_key: str | None = None,
               saga_id: str | None = None, session: Session | None = None,
               connection: Connection | None = None, start_at: datetime | None = None,
               countdown: float | None = None, version: int | None = None,
               cause: dict[str, Any] | None = None) -> str:
    """Validate, record the run with all its steps in one atomic write, publish its first step.

    A saga named by a string starts on its newest registered version, or on `version=`; a `Saga`
    value starts on its own version. The run is driven by that version to its end.

    Returns the saga id. The same idempotency key with the same input returns the same id
    (and publishes nothing new); with a different input it raises `IdempotencyConflict`.
    Bad input raises `InvalidInput` and writes nothing. Once the run is recorded the saga is
    accepted: if the broker is down for its first message, the error is logged, the id returned,
    and the sweeper sends the first step once its deadline passed (step timeout +
    `SAGA_DISPATCH_GRACE`). Raising instead would make a caller without an idempotency key
    start the same order twice.

    `session=` (a SQLAlchemy ORM `Session`) or `connection=` (a Core `Connection`): the run is
    written in the caller's transaction, on the caller's connection to the saga store's database,
    inside a SAVEPOINT; it commits or rolls back with the caller's own rows, and step 1 is published
    only after the caller's outermost transaction has committed (never if it rolls back). A used
    idempotency key (or a taken `saga_id`) rolls back to the savepoint only: the existing id is
    returned (or `IdempotencyConflict`/`SagaIdTaken` raised) and the caller's transaction is still
    usable. If the process dies between the caller's commit and that publish, the sweeper sends
    step 1 once its deadline passed, as for any start.

    `start_at=` (an aware datetime) or `countdown=` (seconds): a scheduled start. The run is
    recorded at once, SCHEDULED (idempotent by key as any start, cancellable until it starts), and
    nothing is published: the sweeper starts it once its time came. Nothing waits in the broker.
    A time that has already come (`countdown=0`, `start_at` in the past) starts it now.

    `cause=` (a JSON object): what started the run, when not a plain call, recorded in its first
    history row (`SagaStarted`, or `SagaScheduled`); a choreography's `ctx.start_saga` passes the
    event that caused it (flow, choreographed saga id, event id and type).
    """
    rt = get_runtime()
    if session is not None and connection is not None:
        raise SagaError("give session= or connection=, not both")
    tx = session if session is not None else connection
    # the run's first trace segment: inside a traced request, a child of its span
    with rt.tracing.segment(saga if isinstance(saga, str) else saga.name, saga_id, "start") as segment:
        saga_id, t = record_start(rt, saga, data, idempotency_key=idempotency_key, saga_id=saga_id, tx=tx,
                                  start_at=start_at, countdown=countdown, version=version, trace=segment.context,
                                  cause=cause)
        segment.annotate(id=saga_id)
        if t is None:
            return saga_id
        if tx is None:
            _publish_first(rt, t)
        else:  # published after the caller's commit, under the run's segment (`t.after.trace`)
            rt.store.after_commit(tx, first_step_publisher(rt, t), check=run_survived(rt, t))
    return saga_id


def record_start(rt: Runtime, saga: Saga | str, data: Any, *, idempotency_key: str | None, saga_id: str | None,
                 tx: Session | Connection | None, start_at: datetime | None, countdown: float | None,
                 version: int | None, trace: str | None = None,
                 cause: dict[str, Any] | None = None) -> tuple[str, Transition | None]:
    """`start_saga` up to its publish: validate, write the run (on `tx` when given). Returns the
    saga id and the transition to publish (None: an existing run, or a scheduled one)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise SagaError(f"version must be an int (got {version!r})")
    if isinstance(saga, str):
        # the one place that picks a version for a new run: the one asked for, else the newest
        definition = registry.get(saga, version) if version is not None else registry.newest(saga)
    else:
        if version is not None and version != saga.version:
            raise SagaError(f"saga {saga.name!r} version {saga.version} was given with version={version}: give one")
        definition = registry.get(saga.name, saga.version)
        if saga.fingerprint != definition.fingerprint:
            raise SagaError(f"saga {saga.name!r} version {saga.version} is not the registered definition of "
                            "that name and version")
    clean = definition.validate_input(data, registry.child_definition)
    clean = seal_input(rt.sealer, definition, clean)  # validated in clear, stored and sent sealed
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise SagaError("idempotency_key must be a non-empty string of at most 200 characters")
    when = _start_time(rt, start_at, countdown)
    started = rt.loop.start(definition, clean, idempotency_key=idempotency_key, saga_id=saga_id, tx=tx,
                            start_at=when, trace=trace, cause=_json_object(cause))
    t = started.transition
    # an existing run, or a scheduled one (the sweeper starts it), publishes nothing; a run whose
    # first stage is a child has no message of its own, only its child's first one (t.children)
    if t is None or not (t.commands or t.children or t.orders or t.dead_letters):
        return started.saga_id, None
    return started.saga_id, t


def _json_object(cause: Any) -> dict[str, Any] | None:
    """`cause` as a JSON object, or `SagaError` saying what is wrong."""
    if cause is None:
        return None
    try:
        clean = json.loads(json.dumps(cause, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise SagaError(f"cause must be a JSON object: {e}") from None
    if not isinstance(clean, dict):
        raise SagaError(f"cause must be a JSON object (a dict), got {type(cause).__name__}")
    return clean


def first_step_publisher(rt: Runtime, t: Transition) -> Callable[[], None]:
    """What runs after the caller's commit: publish the run's first message(s)."""
    return lambda: _publish_first(rt, t)


def run_survived(rt: Runtime, t: Transition) -> Callable[[], bool]:
    """After the caller's commit, when the start was inside a savepoint of the caller's: is the run
    there (or was it rolled back with that savepoint)?"""
    store = rt.store
    return lambda: store.saga_type(t.after.saga_id) is not None


def _start_time(rt: Runtime, start_at: datetime | None, countdown: float | None) -> datetime | None:
    if start_at is not None and countdown is not None:
        raise SagaError("give start_at= or countdown=, not both")
    if countdown is not None:
        if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not math.isfinite(countdown) \
                or countdown < 0:
            raise SagaError(f"countdown must be a number of seconds >= 0 (got {countdown!r})")
        start_at = rt.clock() + timedelta(seconds=countdown)
    elif start_at is not None and (not isinstance(start_at, datetime) or start_at.tzinfo is None):
        raise SagaError(f"start_at must be a timezone-aware datetime (got {start_at!r})")
    return start_at if start_at is not None and start_at > rt.clock() else None


def _publish_first(rt: Runtime, t: Transition) -> None:
    try:
        rt.loop.publish(t)
    except kombu.exceptions.OperationalError as e:
        log.warning("saga recorded, its first step not sent (%s): the sweeper sends it after its deadline", e,
                    extra={"saga_id": t.after.saga_id})


def get_saga(saga_id: str) -> SagaView:
    """The run's state, every step, its history and its dead letters. Raises `SagaNotFound`."""
    return get_runtime().store.get(saga_id)


def find_saga(ref: str, *, by_key: bool = False) -> SagaView:
    """A run by its id or by the idempotency key it was started under (a business id, such as an
    order's): `ref` is a run id first, and when no run has that id, the key of one. `by_key`: only
    the key (a key that happens to be another run's id). Raises `SagaNotFound` naming both."""
    rt = get_runtime()
    if not by_key:
        try:
            return rt.store.get(ref)
        except SagaNotFound:
            pass
    found = rt.store.saga_id_for_key(ref)
    if found is None:
        raise SagaNotFound(f"no saga with idempotency key {ref!r}" if by_key
                           else f"no saga with id {ref!r} (nor with that idempotency key)")
    return rt.store.get(found)


def what_next(saga_id: str) -> Outlook | None:
    """What comes next for the run (`core.outlook`): the steps still to run and the compensations that
    would run, decided by the run's own definition; None when this process does not hold it.
    Raises `SagaNotFound`."""
    run = get_runtime().store.load(saga_id)
    try:
        saga = definition_of(run)
    except UnknownSaga:
        return None
    return outlook(saga.plan, run)


def list_sagas(*, state: str | None = None, saga_type: str | None = None, limit: int = 50,
               offset: int = 0) -> tuple[list[SagaView], int]:
    return get_runtime().store.list(state=state, saga_type=saga_type, limit=limit, offset=offset)


def wait_for(saga_id: str, timeout: float = 30.0, poll: float = 0.05) -> SagaView:
    """Poll until the run is terminal (for scripts and tests); raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        view = get_saga(saga_id)
        if view.terminal:
            return view
        if time.monotonic() > deadline:
            raise TimeoutError(f"saga {saga_id} is still {view.state} after {timeout}s")
        time.sleep(poll)
