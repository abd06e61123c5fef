"""After-commit projections: what leaves the database because of a transition, besides its messages.

    Projection("saga-events", derive=saga_event, sink=KafkaSink(...))   # one record per transition
    Projection("redis-hash", derive=saga_hash, sink=RedisHashSink(...))

A `Projection` is a name, a function from a committed transition to its records (`derive`: a
body per transition, or None when it has nothing to say), and a sink that sends them. The
decision loop asks the configured ones (`Projections`) for a transition's records before its
commit; they are written pending in the transition's own atomic write (`projection_outbox`, the
same statement on PostgreSQL: no round trip more), sent after the commit, before the step
messages, then deleted (one statement). A sink that fails, or a process that dies between the
commit and that delete, leaves the rows: the sweeper sends them (`resend`) once they are older
than the grace. So each record is sent at least once and carries a dedup key (`ProjectedRecord.id`,
`<projection>:<saga id>:<run version>`) a consumer can drop a resend by. With no projection
configured nothing is derived, written or sent: the hot path is as before.

None of them is the record: the database is. A projection's target is a read model or a feed,
rebuildable from the database.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from workflows.core.transition import ProjectedRecord, Transition

log = logging.getLogger("workflows.projections")

PROJECTION_GRACE = 10.0
"""Seconds a pending record is left to its writer before the sweeper sends it."""


class Sink(Protocol):
    """Where a projection's records go (a Kafka topic, Redis, a webhook)."""

    def send(self, records: Sequence[ProjectedRecord]) -> Sequence[str]:
        """Send `records` (of one projection, in order); return the ids of those that went out (the
        others stay pending for the sweeper). May raise: then none counts as sent."""
        ...

    def close(self) -> None:
        """Release the connection (a forked worker process builds its own)."""
        ...


Derive = Callable[[Transition, datetime], "dict[str, Any] | None"]
"""A committed transition (and the time it is committed at) to the body of its record, or None."""


@dataclass(frozen=True)
class Projection:
    name: str
    """Names its records (their dedup key starts with it) and its pending rows."""
    derive: Derive
    sink: Sink


class PendingProjections(Protocol):
    """The store's part (`workflows.store.projections.ProjectionRows`)."""

    def unsent_projections(self, created_before: datetime, limit: int = 500) -> list[ProjectedRecord]: ...

    def projections_sent(self, ids: Sequence[str]) -> None: ...


class Projections:
    """The projections a process is configured with (`projections.setup.from_settings`)."""

    def __init__(self, projections: Sequence[Projection] = ()) -> None:
        self.by_name = {p.name: p for p in projections}

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def derive(self, t: Transition, now: datetime) -> Transition:
        """`t` writing the records of every projection for itself and the child runs it starts."""
        if not self.by_name:
            return t
        return t.projecting(tuple(self._records(t, now)))

    def _records(self, t: Transition, now: datetime) -> list[ProjectedRecord]:
        out = []
        for p in self.by_name.values():
            body = p.derive(t, now)
            if body is not None:
                out.append(ProjectedRecord(f"{p.name}:{t.after.saga_id}:{t.after.version}", p.name,
                                           t.after.saga_id, body))
        for child in t.children:
            out += self._records(child, now)
        return out

    def send(self, records: Sequence[ProjectedRecord], store: PendingProjections) -> list[str]:
        """Send `records` through their sinks, then forget those sent (one statement). A sink
        that fails leaves its records pending for the sweeper; the others still go."""
        sent: list[str] = []
        for name, group in _by_projection(records).items():
            p = self.by_name.get(name)
            if p is None:
                continue  # not configured in this process: another process's sweeper sends it
            try:
                sent += p.sink.send(group)
            except Exception as e:  # the sink is down: the sweeper sends them later
                log.warning("projection %s: %d record(s) not sent (%s): the sweeper sends them", name,
                            len(group), e)
        store.projections_sent(sent)
        return sent

    def resend(self, store: PendingProjections, now: datetime, grace: float = PROJECTION_GRACE,
               limit: int = 500) -> list[str]:
        """The sweeper's part: send the records written over `grace` seconds ago and never sent
        (their writer died, or a sink was down, between commit and send)."""
        if not self.by_name:
            return []
        pending = store.unsent_projections(now - timedelta(seconds=grace), limit)
        return self.send([r for r in pending if r.projection in self.by_name], store)

    def close(self) -> None:
        for p in self.by_name.values():
            try:
                p.sink.close()
            except Exception as e:  # closing is best effort
                log.warning("projection %s: close failed: %s", p.name, e)


NO_PROJECTIONS = Projections()


def _by_projection(records: Sequence[ProjectedRecord]) -> dict[str, list[ProjectedRecord]]:
    groups: dict[str, list[ProjectedRecord]] = {}
    for r in records:
        groups.setdefault(r.projection, []).append(r)
    return groups
