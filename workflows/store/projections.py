"""The store's part of the after-commit projections (`workflows.projections`): the pending rows.

A transition's records (`Transition.projected`) are inserted by its own atomic write (`SqlStore._write`,
the PostgreSQL statements, the starts), deleted once sent (`projections_sent`, one statement), and
read back by the sweeper when a crash or a sink that was down left them (`unsent_projections`).
"""
from __future__ import annotations

import builtins
import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select

from workflows.core.transition import ProjectedRecord
from workflows.store.db import statement_engine
from workflows.store.models import ProjectionRow, SagaRow

PROJECTIONS = ProjectionRow.__table__
_DELETE_BATCH = 100
"""At most this many ids in one delete (the sweeper's batches; a transition has one per projection)."""
PROJECTION_COLUMNS = ("id", "projection", "body", "created_at")


def projection_values(records: Sequence[ProjectedRecord], now: datetime) -> builtins.list[dict[str, Any]]:
    """The pending rows of `records` (each one's own saga id)."""
    return [{"id": r.id, "projection": r.projection, "saga_id": r.saga_id, "body": r.body, "created_at": now}
            for r in records]


@functools.lru_cache(maxsize=_DELETE_BATCH)
def _delete_shape(n: int) -> Any:
    """DELETE FROM projection_outbox WHERE id IN (:id0, ..., :id<n-1>): built once per n."""
    return delete(PROJECTIONS).where(PROJECTIONS.c.id.in_([bindparam(f"id{k}") for k in range(n)]))


class ProjectionRows:
    url: str

    def unsent_projections(self, created_before: datetime, limit: int = 500) -> builtins.list[ProjectedRecord]:
        """Records written before `created_before` and not sent yet, oldest first."""
        q = (select(PROJECTIONS).where(PROJECTIONS.c.created_at < created_before)
             .order_by(PROJECTIONS.c.created_at, PROJECTIONS.c.id).limit(limit))
        with statement_engine(self.url).connect() as c:
            return [ProjectedRecord(r.id, r.projection, r.saga_id, r.body) for r in c.execute(q)]

    def projections_sent(self, ids: Sequence[str]) -> None:
        """Forget the records sent (one statement; none: nothing). On PostgreSQL on the driver's
        cursor, as the hot path's other statements (`store._driver`): through SQLAlchemy's
        execution an `IN` of expanding parameters cost about 1 ms of CPU per step."""
        if not ids:
            return
        if self.url.startswith("sqlite"):
            with statement_engine(self.url).begin() as c:
                c.execute(delete(PROJECTIONS).where(PROJECTIONS.c.id.in_(list(ids))))
            return
        from workflows.store._driver import compiled_for, driver_cursor
        for start in range(0, len(ids), _DELETE_BATCH):
            chunk = list(ids[start:start + _DELETE_BATCH])
            with driver_cursor(self.url) as cur:
                compiled_for(self.url)(_delete_shape(len(chunk))).execute(
                    cur, {f"id{k}": v for k, v in enumerate(chunk)})

    def projection_backlog(self) -> int:
        """How many records wait to be sent (a sink down, or its writer crashed)."""
        with statement_engine(self.url).connect() as c:
            return int(c.scalar(select(func.count()).select_from(PROJECTIONS)) or 0)

    def run_pages(self, after: str = "", limit: int = 500) -> builtins.list[tuple[str, datetime]]:
        """(id, updated_at) of the orchestrated runs whose id sorts after `after`, by id: a rebuild
        of a read model walks every run once (`projections.rebuild`)."""
        sagas = SagaRow.__table__
        q = (select(sagas.c.id, sagas.c.updated_at)
             .where(sagas.c.id > after, sagas.c.style == "orchestrated").order_by(sagas.c.id).limit(limit))
        with statement_engine(self.url).connect() as c:
            return [(r.id, r.updated_at) for r in c.execute(q)]

    def saga_id_for_key(self, idempotency_key: str) -> str | None:
        """The run started under `idempotency_key` (a business id), if any."""
        sagas = SagaRow.__table__
        with statement_engine(self.url).connect() as c:
            found = c.scalar(select(sagas.c.id).where(sagas.c.idempotency_key == idempotency_key))
        return None if found is None else str(found)
