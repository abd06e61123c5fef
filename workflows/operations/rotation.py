"""`sagas rotate-key`: every envelope re-sealed under the current key, in batches, without stopping.

    report = rotate(runtime, batch=200)

Put the new key first in `SAGA_FIELD_KEYS` (keep the old ones after it) on every process and
restart them; new seals then use it, and every process still opens the old. This rewrites what
is stored under an older key: runs' inputs, steps' results, dead letters' messages, choreography
events, history rows, signals and projection records, each batch one short transaction
(`store.sealed_rows`). A message already in the broker keeps its old envelope until
it is delivered (the old key still opens it); the next message of its run is made from the
rewritten input. Once no envelope names the old key (`remaining` is 0) and no message of before
the rotation is still queued, the old key can be dropped from `SAGA_FIELD_KEYS`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from workflows.core.errors import SealingError
from workflows.core.sealed import has_sealed, map_sealed
from workflows.runtime.container import Runtime
from workflows.runtime.sealing import Sealer
from workflows.store.sealed_rows import TABLES, Rewrite, SealedRows


@dataclass
class RotationReport:
    key: str
    """The current key everything was re-sealed into."""
    runs: int = 0
    """Runs whose input was rewritten."""
    step_results: int = 0
    dead_letters: int = 0
    events: int = 0
    """Choreography events (the outbox's envelopes) rewritten."""
    history: int = 0
    """History rows (an event's or a signal's payload) rewritten."""
    signals: int = 0
    projections: int = 0
    """Records a projection had still to send."""
    batches: int = 0
    remaining: dict[str, int] = field(default_factory=dict)
    """Envelopes still naming another key, by key, when it finished (0 unless a write raced it)."""


def rotate(rt: Runtime, *, batch: int = 200) -> RotationReport:
    """Re-seal every stored envelope under the current key; see the module's docstring."""
    sealer = rt.sealer
    if sealer is None:
        raise SealingError("no key is configured: set SAGA_FIELD_KEYS (the new key first) and SAGA_FIELD_HASH_KEY")
    rows = SealedRows(rt.settings.resolved_database_url())
    report = RotationReport(sealer.current)
    for part, changed in _passes(rows, sealer.reseal_all, batch):
        setattr(report, part, getattr(report, part) + changed)
        report.batches += 1
    report.remaining = count_old(rows, sealer)
    return report


def _passes(rows: SealedRows, rewrite: Rewrite, batch: int, *, lock: bool = True) -> Iterator[tuple[str, int]]:
    """(part, rows changed) of each batch over every part that holds envelopes, in order. `lock`:
    the rows of a batch are locked while it rewrites them (False for a pass that only reads)."""
    parts: list[tuple[str, Callable[..., tuple[Any, int]]]] = [
        ("runs", partial(rows.reseal, "runs", lock=lock)),
        ("step_results", partial(rows.reseal_step_results, lock=lock)),
        *((t, partial(rows.reseal, t, lock=lock)) for t in TABLES if t != "runs")]
    for part, reseal in parts:
        after: Any = None
        while True:
            after, changed = reseal(rewrite, after=after, limit=batch)
            yield part, changed
            if after is None:
                break


def count_old(rows: SealedRows, sealer: Sealer) -> dict[str, int]:
    """Envelopes stored under a key other than the current one, by key."""
    found: dict[str, int] = {}

    def count(e: dict[str, object]) -> dict[str, object]:
        if e["kid"] != sealer.current:
            found[str(e["kid"])] = found.get(str(e["kid"]), 0) + 1
        return e

    def note(value: object) -> object:
        if has_sealed(value):
            map_sealed(value, count)
        return value  # the same object: nothing is written

    for _ in _passes(rows, note, 1000, lock=False):  # a count: no transition waits for it
        pass
    return found
