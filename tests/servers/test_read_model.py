"""The saga as a Redis hash (`HGETALL saga:<id>`): a read model kept up to date after each commit
through the projection mechanism, on the real Redis (SAGA test db) and PostgreSQL, runs driven in
process (recording dispatcher, test clock). After completion, after compensation, after a crash
between the commit and the update (repaired by the sweeper), and rebuilt from the database."""
from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from workflows import start_saga
from workflows.interfaces import cli
from workflows.core.outcomes import ActionSucceeded
from workflows.operations.sweeper import sweep
from workflows.projections.rebuild import rebuild_read_model
from workflows.core.state import IdSource
from workflows.runtime.container import Runtime
from workflows.runtime.settings import Settings
from workflows.testing import Clock, Worker
from tests.support.projection_sagas import LINE

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def r() -> Iterator[Any]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def saga_database_url(database: str) -> str:
    """The session's PostgreSQL database (the kit's runtime on it)."""
    return database


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    return {"redis_read_model_url": REDIS_URL, "redis_read_model_ttl": 600}


@pytest.fixture
def saga_ids() -> IdSource:
    """Ids of this test's own on the shared database and Redis."""
    prefix = uuid.uuid4().hex[:12]
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):020x}"


def drain(rt: Runtime) -> None:
    Worker(rt, rt.dispatcher).drain()  # type: ignore[arg-type]


def test_a_completed_saga_reads_completed_and_expires_after_the_setting(rt: Runtime, r: Any) -> None:
    saga_id = start_saga(LINE, {})
    assert r.hgetall(f"saga:{saga_id}")["state"] == "RUNNING"  # right after the start's commit
    drain(rt)
    h = r.hgetall(f"saga:{saga_id}")
    assert h["state"] == "COMPLETED" and h["type"] == "proj.line" and h["version"] == "1"
    assert h["step"] == "c" and h["error"] == "" and h["run_version"] == str(rt.store.load(saga_id).version)
    assert h["updated_at"] == rt.store.get(saga_id).updated_at.isoformat()
    assert 0 < r.ttl(f"saga:{saga_id}") <= 600


def test_a_compensated_saga_shows_its_last_error(rt: Runtime, r: Any) -> None:
    saga_id = start_saga(LINE, {"fail": "c"})
    drain(rt)
    h = r.hgetall(f"saga:{saga_id}")
    assert h["state"] == "COMPENSATED" and "c refuses" in h["error"]


def test_a_running_saga_has_no_expiry(rt: Runtime, r: Any) -> None:
    saga_id = start_saga(LINE, {})
    assert r.ttl(f"saga:{saga_id}") == -1


def test_a_crash_between_commit_and_update_is_repaired_by_the_sweeper(rt: Runtime, r: Any, clock: Clock) -> None:
    # Given a run whose first step committed, but whose process died before the read model was updated
    saga_id = start_saga(LINE, {})
    [first] = rt.dispatcher.take()  # type: ignore[attr-defined]
    run = rt.store.load(saga_id)
    applied = rt.loop.commit(LINE, saga_id, ActionSucceeded("a", {"step": "a"}), by=first.task_id, state=run)
    assert applied.transition is not None  # committed; `publish` never ran
    assert r.hgetall(f"saga:{saga_id}")["run_version"] == str(run.version)  # behind the database

    # When the sweeper runs after the grace
    clock.advance(rt.settings.projection_grace + 1)
    report = sweep(rt)

    # Then the hash caught up with the database
    assert f"redis-hash:{saga_id}:{applied.state.version}" in report.projections_sent
    assert r.hgetall(f"saga:{saga_id}")["run_version"] == str(applied.state.version)


def test_a_late_resend_never_moves_a_run_back(rt: Runtime, r: Any) -> None:
    saga_id = start_saga(LINE, {})
    drain(rt)
    sink = rt.projections.by_name["redis-hash"].sink
    sink.write(saga_id, {"state": "RUNNING", "run_version": "1", "terminal": "0"})  # type: ignore[attr-defined]
    assert r.hgetall(f"saga:{saga_id}")["state"] == "COMPLETED"


def test_the_read_model_is_rebuilt_from_the_database(rt: Runtime, r: Any) -> None:
    done = start_saga(LINE, {})
    failed = start_saga(LINE, {"fail": "b"})
    drain(rt)
    r.delete(f"saga:{done}", f"saga:{failed}")
    assert rebuild_read_model(rt) >= 2
    assert r.hget(f"saga:{done}", "state") == "COMPLETED"
    assert r.hget(f"saga:{failed}", "state") == "COMPENSATED" and "b refuses" in r.hget(f"saga:{failed}", "error")
    r.delete(f"saga:{done}")
    assert rebuild_read_model(rt, saga_id=done) == 1 and r.hget(f"saga:{done}", "state") == "COMPLETED"


def test_sagas_redis_rebuild_writes_the_read_model_again(rt: Runtime, r: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    saga_id = start_saga(LINE, {})
    drain(rt)
    r.delete(f"saga:{saga_id}")
    monkeypatch.setattr(cli, "_runtime", lambda: rt)

    one = CliRunner().invoke(cli.main, ["redis-rebuild", "--saga-id", saga_id])
    every = CliRunner().invoke(cli.main, ["redis-rebuild"])

    assert one.exit_code == every.exit_code == 0, one.output + every.output
    assert one.stdout.strip() == "1 run(s) written to the read model"
    assert every.stdout.strip().endswith("run(s) written to the read model")
    assert r.hget(f"saga:{saga_id}", "state") == "COMPLETED"


def test_sagas_redis_rebuild_without_a_read_model_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = Runtime(app=None, settings=Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}"))
    monkeypatch.setattr(cli, "_runtime", lambda: plain)
    out = CliRunner().invoke(cli.main, ["redis-rebuild"])
    assert out.exit_code == 1 and "SAGA_REDIS_READ_MODEL_URL is not set" in out.stderr
