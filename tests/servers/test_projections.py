"""After-commit projections (`workflows.projections`): every transition's records are written
pending with it, sent after its commit (before its step messages), deleted once sent; the sweeper
sends what a crash or a sink down left. The in-process tier (recording dispatcher, test clock), on
SQLite and on PostgreSQL (the one-statement hot path writes the pending rows in its statement)."""
from __future__ import annotations

import itertools
import uuid
from datetime import timedelta
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from workflows import start_saga
from workflows.core.transition import ProjectedRecord, Transition
from workflows.operations.sweeper import sweep
from workflows.projections import Projection, Projections
from workflows.projections.views import saga_event, saga_hash
from workflows.core.state import IdSource
from workflows.runtime.container import Runtime, activate
from workflows.testing import Clock, Worker, in_process_runtime, sqlite_database
from tests.support.projection_sagas import LINE


class RecordingSink:
    """Keeps what it was sent; `down` makes it fail like a broker that does not answer."""

    def __init__(self) -> None:
        self.sent: list[ProjectedRecord] = []
        self.down = False

    def send(self, records: Sequence[ProjectedRecord]) -> Sequence[str]:
        if self.down:
            raise ConnectionError("sink down")
        self.sent += records
        return [r.id for r in records]

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def saga_database_url(request: Any, saga_database_url: str) -> str:
    """The kit's SQLite file, or the session's PostgreSQL database (its one-statement hot path)."""
    return saga_database_url if request.param == "sqlite" else str(request.getfixturevalue("database"))


@pytest.fixture
def saga_ids() -> IdSource:
    """Ids of this test's own on the shared PostgreSQL database."""
    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):020x}"


@pytest.fixture
def events() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def saga_projections(events: RecordingSink) -> Projections:
    return Projections([Projection("events", saga_event, events)])


def pending(rt: Runtime, saga_id: str) -> list[ProjectedRecord]:
    return [r for r in rt.store.unsent_projections(rt.clock() + timedelta(days=1))
            if r.saga_id == saga_id]


def test_every_transition_is_projected_once_in_order_and_nothing_stays_pending(rt: Runtime,
                                                                               events: RecordingSink) -> None:
    # Given a three-step saga, When it runs to completion
    saga_id = start_saga("proj.line", {})
    Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]

    # Then one record per transition, versions 1.. in order, the last COMPLETED; none pending
    mine = [r for r in events.sent if r.saga_id == saga_id]
    versions = [r.body["run_version"] for r in mine]
    assert versions == list(range(versions[0], versions[0] + 4)) and len(mine) == 4
    assert [r.id for r in mine] == [f"events:{saga_id}:{v}" for v in versions]
    assert mine[0].body["event"] == "SagaStarted" and mine[-1].body["state"] == "COMPLETED"
    assert {r.body["event_id"] for r in mine} == {f"{saga_id}:{v}" for v in versions}
    assert rt.store.get(saga_id).state == "COMPLETED" and pending(rt, saga_id) == []


def test_a_compensated_saga_projects_its_compensation(rt: Runtime, events: RecordingSink) -> None:
    saga_id = start_saga("proj.line", {"fail": "c"})
    Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]
    mine = [r.body for r in events.sent if r.saga_id == saga_id]
    assert [b["state"] for b in mine][-1] == "COMPENSATED"
    assert "COMPENSATING" in [b["state"] for b in mine]


def test_a_sink_down_leaves_the_records_pending_and_the_sweeper_sends_them_in_order(
        rt: Runtime, events: RecordingSink, clock: Clock) -> None:
    # Given the sink down while a saga runs: the saga is not held up
    events.down = True
    saga_id = start_saga("proj.line", {})
    Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]
    assert rt.store.get(saga_id).state == "COMPLETED" and events.sent == []
    versions = [r.body["run_version"] for r in pending(rt, saga_id)]
    assert versions == list(range(versions[0], versions[0] + 4))

    # When the sink is back, a sweep inside the grace leaves them to their writer, a later one sends them
    events.down = False
    assert sweep(rt).projections_sent == []
    clock.advance(rt.settings.projection_grace + 1)
    report = sweep(rt)

    # Then every record, once, in order, and nothing pending
    assert [r.body["run_version"] for r in events.sent] == versions
    assert sorted(report.projections_sent) == sorted(r.id for r in events.sent)
    assert pending(rt, saga_id) == [] and sweep(rt).projections_sent == []


def test_a_crash_between_commit_and_send_is_repaired_by_the_sweeper(rt: Runtime, events: RecordingSink,
                                                                    clock: Clock) -> None:
    # Given a start committed whose process died before publishing (nothing sent, nothing published)
    saga_id = rt.loop.start(LINE, {}).saga_id
    assert events.sent == [] and [r.body["event"] for r in pending(rt, saga_id)] == ["SagaStarted"]

    # When the sweeper runs after the grace
    clock.advance(rt.settings.projection_grace + 1)
    sweep(rt)

    # Then the start's record went out, with its dedup key
    assert [r.id for r in events.sent if r.saga_id == saga_id] == [f"events:{saga_id}:{rt.store.load(saga_id).version}"]
    assert pending(rt, saga_id) == []


def test_no_projection_configured_writes_nothing(tmp_path: Path, clock: Clock) -> None:
    # (the notifications' log line is on by default: off here, nothing at all is configured)
    runtime = in_process_runtime(sqlite_database(tmp_path, name="none.db"), tmp_path, clock=clock, notify_log=False)
    with activate(runtime):
        saga_id = start_saga("proj.line", {})
        Worker(runtime, runtime.dispatcher).drain()  # type: ignore[arg-type]
        assert runtime.store.get(saga_id).state == "COMPLETED"
        assert runtime.store.unsent_projections(clock() + timedelta(days=1)) == []
        assert not runtime.projections


def test_by_default_only_the_notifications_are_configured_and_a_run_that_completes_writes_nothing(
        tmp_path: Path, clock: Clock) -> None:
    runtime = in_process_runtime(sqlite_database(tmp_path, name="default.db"), tmp_path, clock=clock)
    with activate(runtime):
        saga_id = start_saga("proj.line", {})
        Worker(runtime, runtime.dispatcher).drain()  # type: ignore[arg-type]
        assert runtime.store.get(saga_id).state == "COMPLETED"
        assert list(runtime.projections.by_name) == ["notify"]
        assert runtime.store.unsent_projections(clock() + timedelta(days=1)) == []
        assert runtime.store.notifications() == []


def test_the_hash_body_names_state_type_version_step_and_last_error(rt: Runtime) -> None:
    saga_id = start_saga("proj.line", {"fail": "b"})
    Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]
    run = rt.store.load(saga_id)
    fields = saga_hash(Transition(run, run, ()), rt.clock())
    assert fields["state"] == "COMPENSATED" and fields["type"] == "proj.line" and fields["version"] == "1"
    assert "b refuses" in fields["error"] and fields["updated_at"] == rt.clock().isoformat()
