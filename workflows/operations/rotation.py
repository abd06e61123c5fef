"""`sagas rotate-key`: every envelope re-sealed under the current key, in batches, without stopping.

    report = rotate(runtime, batch=200)

Put the new key first in `SAGA_FIELD_KEYS` (keep the old ones after it) on every process and
restart them; new seals then use it, and every process still opens the old. This rewrites what
is stored under an older key: runs' inputs, steps' results, then dead letters' messages, each batch one short
transaction (`store.sealed_rows`). A message already in the broker keeps its old envelope until
it is delivered (the old key still opens it); the next message of its run is made from the
rewritten input. Once no envelope names the old key (`remaining` is 0) and no message of before
the rotation is still queued, the old key can be dropped from `SAGA_FIELD_KEYS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from workflows.core.errors import SealingError
from workflows.core.sealed import has_sealed, map_sealed
from workflows.runtime.container import Runtime
from workflows.runtime.sealing import Sealer
from workflows.store.sealed_rows import SealedRows


@dataclass
class RotationReport:
    key: str
    """The current key everything was re-sealed into."""
    runs: int = 0
    """Runs whose input was rewritten."""
    step_results: int = 0
    dead_letters: int = 0
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
    rewrite = sealer.reseal_all
    for step, attr in ((rows.reseal_runs, "runs"), (rows.reseal_step_results, "step_results"),
                       (rows.reseal_dead_letters, "dead_letters")):
        after: str | None = ""
        while after is not None:
            after, changed = step(rewrite, after=after, limit=batch)
            setattr(report, attr, getattr(report, attr) + changed)
            report.batches += 1
    report.remaining = count_old(rows, sealer)
    return report


def count_old(rows: SealedRows, sealer: Sealer) -> dict[str, int]:
    """Envelopes stored under a key other than the current one, by key."""
    found: dict[str, int] = {}

    def note(value: object) -> object:
        if has_sealed(value):
            def count(e: dict[str, object]) -> dict[str, object]:
                if e["kid"] != sealer.current:
                    found[str(e["kid"])] = found.get(str(e["kid"]), 0) + 1
                return e
            map_sealed(value, count)
        return value

    for step in (rows.reseal_runs, rows.reseal_step_results, rows.reseal_dead_letters):
        after: str | None = ""
        while after is not None:
            after, _ = step(note, after=after, limit=1000)
    return found
