"""Signals: what a person or a service sends to a run that waits (`Wait`), from Python, the API, the CLI
or a choreographed event (`OnEvent`, answered by `choreography.reactions`).

    signal(saga_id, "approval", {"approved": True}, idempotency_key="approval-1001", who="alice")

The payload is validated by the wait's model (`InvalidInput`: nothing written), its `sensitive`
fields sealed (`runtime.sealing`), then the signal is
recorded and applied in one version-checked write through the decision loop: consumed by the wait
that is parked on it (its payload becomes the wait's result; the wait's `approve` says whether the
saga goes on or compensates), or kept, when its wait has not begun, and consumed when it begins.
The same key again is a no-op (`duplicate`); a run that is not waiting for it raises `NotWaiting`
and changes nothing (the refusal is in its history); an unknown run raises `SagaNotFound`.
"""
from __future__ import annotations

import logging
from typing import Any

import kombu.exceptions

from workflows.core.definition import Saga, Wait, definition_of
from workflows.core.errors import NotWaiting, SagaError, SignalConflict
from workflows.core.sealed import stable
from workflows.core.state import HistoryEvent, RunState, Signal, StepStatus
from workflows.core.views import Signalled, SignalView
from workflows.runtime.container import get_runtime
from workflows.runtime.sealing import seal_paths
from workflows.runtime.loop import signal_by


log = logging.getLogger("workflows.signals")


def signal(saga_id: str, name: str, payload: Any = None, *, idempotency_key: str | None = None,
           who: str = "operator", also_sealed: tuple[str, ...] = ()) -> Signalled:
    """Send signal `name` with `payload` to run `saga_id`. Without a key every call is a new signal.
    `also_sealed`: payload fields to seal besides the wait's own `sensitive` (an event's declared
    ones, when a choreographed event answers the wait).
    Once recorded, the signal is accepted: a broker down for what it dispatches is logged, and the
    sweeper sends it at its deadline (as for a start)."""
    rt = get_runtime()
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 200):
        raise SagaError("idempotency_key must be a non-empty string of at most 200 characters")
    if not isinstance(who, str) or not 0 < len(who) <= 200:
        raise SagaError("who must be a non-empty string of at most 200 characters")
    run = rt.store.load(saga_id)
    saga = definition_of(run)  # the run's own version decides, not the newest
    wait = _wait_for(saga, run, name)
    if wait is None:
        why = f"saga {run.saga_type!r} has no wait for signal {name!r}"
        rt.store.record(saga_id, HistoryEvent("SignalRefused", None, None, {
            "signal": name, "who": who, "idempotency_key": idempotency_key, "refused": why}),
            by=f"signal:{who}", now=rt.clock())
        raise NotWaiting(f"saga {saga_id} is not waiting for signal {name!r}: {why}")
    clean = wait.validate(payload)
    wait.approves(clean)  # a payload its approve function cannot read is refused here, before any write
    clean = seal_paths(rt.sealer, f"wait {wait.name!r} of saga {saga.name!r}",
                       tuple(dict.fromkeys([*wait.sensitive, *also_sealed])), clean)
    key = idempotency_key or f"signal-{rt.ids()}"
    seen = rt.store.signal_for_key(saga_id, key)
    if seen is not None:
        return _duplicate(seen, name, clean, saga, run, republish=True)
    sig = Signal(id=rt.ids(), name=name, payload=clean, idempotency_key=key, who=who, received_at=rt.clock())
    try:
        applied = rt.loop.signal(saga, saga_id, sig)
    except kombu.exceptions.OperationalError as e:
        # recorded and applied: what it dispatched is sent by the sweeper at its deadline (or by
        # the same signal sent again); raising would make a caller without a key send a second one
        log.warning("signal recorded, what it dispatched not sent (%s): the sweeper sends it", e,
                    extra={"saga_id": saga_id})
        recorded = rt.store.signal_for_key(saga_id, key)
        if recorded is None:
            raise
        return Signalled(saga_id, recorded, False, rt.store.load(saga_id).status.value)
    if applied.transition is None:
        seen = rt.store.signal_for_key(saga_id, key)
        if applied.ignored == "duplicate" and seen is not None:
            return _duplicate(seen, name, clean, saga, applied.state, republish=False)  # the loop republished
        raise NotWaiting(f"{applied.ignored}; nothing was changed")
    recorded = rt.store.signal_for_key(saga_id, key)
    assert recorded is not None, "committed with the transition"
    return Signalled(saga_id, recorded, False, applied.state.status.value)


def _wait_for(saga: Saga, run: RunState, name: str) -> Wait | None:
    """The wait a signal `name` is for: the one parked on it, else the next one to begin, else the first."""
    waits = saga.waits_for(name)
    for wanted in (StepStatus.WAITING, StepStatus.PENDING):
        for w in waits:
            if run.step(w.name).status == wanted:
                return w
    return waits[0] if waits else None


def _duplicate(seen: SignalView, name: str, payload: dict[str, Any], saga: Saga, run: RunState, *,
               republish: bool) -> Signalled:
    if seen.name != name or stable(seen.payload) != stable(payload):  # a sealed field: by its keyed mac
        raise SignalConflict(f"idempotency key {seen.idempotency_key!r} was already used on saga {run.saga_id} for "
                             f"signal {seen.name!r} with another payload; use a new key for a new signal")
    if republish and run.caused_by == signal_by(seen.id):  # its sender may have died between commit and publish
        get_runtime().loop.republish(saga, run)
    return Signalled(run.saga_id, seen, True, run.status.value)
