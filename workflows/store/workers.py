"""The store's part of versioned definitions: worker heartbeats, recorded shapes, parked steps,
runs per version.

Mixed into every store (`SqlStore`). A worker announces the saga versions it holds when it starts
and on a timer (`saga_workers`); the shape of every (saga, version) a worker ever held is recorded
once (`saga_definitions`), so a worker whose code changed a shape without a new version is caught
when it starts, whatever process registered the old shape.
"""
from __future__ import annotations

import builtins
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from workflows.core.state import HistoryEvent, RunStatus
from workflows.core.views import WorkerView
from workflows.store.records import ParkedStep, RecordedDefinition, VersionCount
from workflows.store.models import DefinitionRow, EventRow, ParkedStepRow, SagaRow, WorkerRow


class Workers:
    """Heartbeats and definitions; one short transaction each."""

    url: str
    sessions: sessionmaker[Session]

    def announce_worker(self, name: str, versions: dict[str, dict[str, str]], now: datetime) -> None:
        """Insert or refresh `name`'s heartbeat with the versions it holds."""
        with self.sessions.begin() as s:
            done = s.execute(update(WorkerRow).where(WorkerRow.name == name).values(versions=versions, seen_at=now))
            if done.rowcount == 1:  # type: ignore[attr-defined]
                return
        try:
            with self.sessions.begin() as s:
                s.execute(insert(WorkerRow).values(name=name, versions=versions, started_at=now, seen_at=now))
        except IntegrityError:  # the same name raced itself (two timers): the row is there
            pass

    def forget_worker(self, name: str) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(WorkerRow).where(WorkerRow.name == name))

    def live_workers(self, seen_since: datetime) -> builtins.list[WorkerView]:
        """Workers whose heartbeat is newer than `seen_since`, by name."""
        with self.sessions() as s:
            rows = s.scalars(select(WorkerRow).where(WorkerRow.seen_at >= seen_since).order_by(WorkerRow.name)).all()
            return [WorkerView(r.name, dict(r.versions), r.started_at, r.seen_at) for r in rows]

    def record_definitions(self, defs: builtins.list[RecordedDefinition],
                           now: datetime) -> builtins.list[tuple[RecordedDefinition, RecordedDefinition]]:
        """Record each (saga, version) not recorded yet; returns (recorded, given) for each one
        recorded with another fingerprint (nothing of those is written)."""
        conflicts: list[tuple[RecordedDefinition, RecordedDefinition]] = []
        for d in defs:
            for _ in range(2):  # a second worker may record the same definition at the same moment
                found = self._definition(d.saga_type, d.saga_version)
                if found is not None:
                    if found.fingerprint != d.fingerprint:
                        conflicts.append((found, d))
                    break
                try:
                    with self.sessions.begin() as s:
                        s.execute(insert(DefinitionRow).values(saga_type=d.saga_type, saga_version=d.saga_version,
                                                               fingerprint=d.fingerprint, shape=d.shape,
                                                               first_seen=now))
                    break
                except IntegrityError:
                    continue
        return conflicts

    def _definition(self, saga_type: str, saga_version: int) -> RecordedDefinition | None:
        with self.sessions() as s:
            row = s.get(DefinitionRow, (saga_type, saga_version))
            if row is None:
                return None
            return RecordedDefinition(row.saga_type, row.saga_version, row.fingerprint, list(row.shape))

    def recorded_definitions(self) -> builtins.list[RecordedDefinition]:
        with self.sessions() as s:
            rows = s.scalars(select(DefinitionRow).order_by(DefinitionRow.saga_type, DefinitionRow.saga_version))
            return [RecordedDefinition(r.saga_type, r.saga_version, r.fingerprint, list(r.shape)) for r in rows]

    def park_step(self, p: ParkedStep, event: HistoryEvent, *, by: str, now: datetime) -> None:
        try:
            with self.sessions.begin() as s:
                s.execute(insert(ParkedStepRow).values(saga_id=p.saga_id, task_id=p.task_id, saga_type=p.saga_type,
                                                       saga_version=p.saga_version, step=p.step, kind=p.kind,
                                                       parked_at=now))
                s.execute(insert(EventRow).values(saga_id=p.saga_id, at=now, type=event.type, step=event.step,
                                                  attempt=event.attempt, detail={**event.detail, "by": by}))
        except IntegrityError:  # parked already (a duplicate of the message): nothing more to record
            pass

    def parked_steps(self, limit: int = 500) -> builtins.list[ParkedStep]:
        with self.sessions() as s:
            rows = s.scalars(select(ParkedStepRow).order_by(ParkedStepRow.parked_at).limit(limit)).all()
            return [ParkedStep(r.saga_id, r.task_id, r.saga_type, r.saga_version, r.step, r.kind) for r in rows]

    def unpark(self, saga_id: str, task_id: str) -> None:
        with self.sessions.begin() as s:
            s.execute(delete(ParkedStepRow).where(ParkedStepRow.saga_id == saga_id, ParkedStepRow.task_id == task_id))

    def version_counts(self, *, active_only: bool = False) -> builtins.list[VersionCount]:
        """Orchestrated runs by saga type, version and state (`active_only`: the states not terminal)."""
        q = (select(SagaRow.saga_type, SagaRow.saga_version, SagaRow.state, func.count())
             .where(SagaRow.style == "orchestrated"))
        if active_only:
            q = q.where(SagaRow.state.in_([s.value for s in RunStatus if not s.terminal]))
        with self.sessions() as s:
            rows = s.execute(q.group_by(SagaRow.saga_type, SagaRow.saga_version, SagaRow.state)).all()
        return [VersionCount(t, int(v), st, int(n)) for t, v, st, n in rows]
