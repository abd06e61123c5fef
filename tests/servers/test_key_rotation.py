"""`sagas rotate-key` under load: runs sealed under the old key keep completing while every stored
envelope is re-sealed under the new one, and afterwards no envelope names the old key.

A database of its own (the rotation rewrites every run in it) and a worker of its own on a queue
no other test's worker consumes (`sealed_rotation`), holding both keys, the new one first."""
from __future__ import annotations

import base64
import hashlib
import random
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

import tests.support.sealed_steps  # noqa: F401  (registers sealed.rotation)
from tests.support.databases import libpq_url, own_pg_database
from tests.support.interfaces import wait_until
from tests.support.workers import WorkerProcess, worker_env
from workflows.core.sealed import is_sealed
from workflows.interfaces import cli
from workflows.operations.client import first_step_publisher, record_start, start_saga
from workflows.operations.rotation import rotate
from workflows.runtime.container import Runtime, activate
from workflows.runtime.settings import Settings


def key(seed: str) -> str:
    return base64.b64encode(hashlib.sha256(seed.encode()).digest()).decode()


OLD, NEW, HASH = f"old1:{key('rotation old')}", f"new2:{key('rotation new')}", key("rotation hash")
MODULES = "tests.support.sagas,tests.support.sealed_steps"


@pytest.fixture(scope="module")
def rotation_db() -> Iterator[str]:
    with own_pg_database("rotation") as url:
        yield url


@pytest.fixture
def rotation_worker(app, rotation_db: str, tmp_path) -> Iterator[WorkerProcess]:  # type: ignore[no-untyped-def]
    w = WorkerProcess("rotation", "sealed_rotation", concurrency=2, log=tmp_path / "worker.log",
                      env=worker_env(SAGA_DATABASE_URL=rotation_db, SAGA_FIELD_KEYS=f"{NEW},{OLD}",
                                     SAGA_FIELD_HASH_KEY=HASH, SAGA_EXTRA_MODULES=MODULES))
    try:
        w.wait_ready(app, timeout=60)
        yield w
    finally:
        w.stop()


def runtime(app: Any, url: str, keys: str) -> Runtime:
    return Runtime(app=app, settings=Settings(database_url=url, field_keys=keys, field_hash_key=HASH))  # type: ignore[arg-type]


def card() -> str:
    return "47" + "".join(random.choice("0123456789") for _ in range(14))


def test_runs_keep_completing_during_the_rotation_and_no_envelope_names_the_old_key_after(  # type: ignore[no-untyped-def]
        app, rotation_db, rotation_worker, monkeypatch) -> None:
    # Given 80 runs started by processes that hold only the old key
    before = runtime(app, rotation_db, OLD)
    cards: dict[str, str] = {}
    with activate(before):
        for i in range(80):
            c = card()
            cards[start_saga("sealed.rotation", {"order_id": f"r-{i}", "payment": {"card": c}})] = c
    # When the new key comes first everywhere, and `rotate-key` runs while the worker completes those
    # runs and new ones are started (under the new key)
    after = runtime(app, rotation_db, f"{NEW},{OLD}")
    in_flight = [i for i in cards if after.store.load(i).status.value == "RUNNING"]

    def start_more() -> None:  # on its own runtime, given explicitly: `activate` is process-wide
        rt = runtime(app, rotation_db, f"{NEW},{OLD}")
        for i in range(20):
            c = card()
            saga_id, t = record_start(rt, "sealed.rotation", {"order_id": f"n-{i}", "payment": {"card": c}},
                                      idempotency_key=None, saga_id=None, tx=None, start_at=None, countdown=None,
                                      version=None)
            assert t is not None
            first_step_publisher(rt, t)()
            cards[saga_id] = c

    more = threading.Thread(target=start_more)
    more.start()
    report = rotate(after, batch=5)
    more.join()

    # Then the rotation re-sealed the old runs while some were still running, and every run completed
    # with the clear card in its steps (opened under whichever key its message carried)
    assert in_flight, "no run was in flight when the rotation began: nothing ran concurrently"
    assert report.key == "new2" and report.runs >= 1 and report.remaining == {}

    def all_done() -> bool:
        return all(after.store.load(i).status.value == "COMPLETED" for i in cards)

    wait_until(all_done, timeout=120, what="every run completed")
    for saga_id, c in cards.items():
        view = after.store.get(saga_id)
        assert [s.result for s in view.steps] == [{"last4": c[-4:]}, {"last4": c[-4:]}]
        env = view.input["payment"]["card"]
        assert is_sealed(env) and env["kid"] == "new2"
    # ... and no envelope anywhere in the database names the old key
    dump = subprocess.run(["pg_dump", "--data-only", libpq_url(rotation_db)],
                          capture_output=True, text=True, check=True).stdout
    assert '"kid": "new2"' in dump and '"kid": "old1"' not in dump
    assert not any(c in dump for c in cards.values())

    # `sagas rotate-key` again finds nothing left to do
    monkeypatch.setattr(cli, "_runtime", lambda: after)
    with activate(after):
        out = CliRunner().invoke(cli.main, ["rotate-key", "--batch", "7"])
    assert out.exit_code == 0, out.output
    assert "0 run(s), 0 step result(s), 0 dead letter(s)" in out.output
    assert "still under another key: none" in out.output


def test_counting_what_is_left_locks_no_row_a_transition_would_wait_for(app, rotation_db) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from tests.support.databases import libpq_url
    from workflows.operations.rotation import count_old
    from workflows.runtime.sealing import Sealer
    from workflows.store.sealed_rows import SealedRows

    old = runtime(app, rotation_db, OLD)
    with activate(old):
        saga_id = start_saga("sealed.rotation", {"order_id": "r-lock", "payment": {"card": card()}})
    sealer = Sealer.from_settings(Settings(database_url=rotation_db, field_keys=f"{NEW},{OLD}",  # type: ignore[arg-type]
                                           field_hash_key=HASH))
    assert sealer is not None
    # Given a transition holding the run's row (as a worker's write does for a moment)
    with psycopg.connect(libpq_url(rotation_db)) as holder:
        holder.execute("SELECT 1 FROM sagas WHERE id = %s FOR UPDATE", (saga_id,))
        # When what is left under the old key is counted meanwhile
        left: dict[str, int] = {}
        counting = threading.Thread(target=lambda: left.update(count_old(SealedRows(rotation_db), sealer)))
        counting.start()
        counting.join(timeout=10)
        # Then it read past the held row without waiting for it, and counted its envelope
        done = not counting.is_alive()
    counting.join()  # (had it waited, the holder's end lets it finish)
    assert done, "counting waited for a row a transition held"
    assert left.get("old1", 0) >= 1
