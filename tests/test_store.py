"""One store suite, run against each real backend: SQLite and PostgreSQL."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from workflows import IdempotencyConflict, InvalidInput, Saga, SagaNotFound, Step, UnknownSaga
from workflows.db import migrate
from workflows.engine import ActionSucceeded, Started
from workflows.models import EventRow, SagaRow, StepRow
from workflows.store import SagaStore

SAGA = Saga("store_suite", steps=[Step("a", action="x.a", compensation="x.undo_a"),
                                  Step("b", action="x.b", compensation=None)])


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> SagaStore:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
    else:
        url = request.getfixturevalue("database")
    return SagaStore(url)


def counts(store: SagaStore, saga_id: str) -> tuple[int, int, int]:
    with store.sessions() as s:
        return (s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.id == saga_id)) or 0,
                s.scalar(select(func.count()).select_from(StepRow).where(StepRow.saga_id == saga_id)) or 0,
                s.scalar(select(func.count()).select_from(EventRow).where(EventRow.saga_id == saga_id)) or 0)


def test_a_run_is_written_with_all_its_steps_and_first_event_at_once(store: SagaStore) -> None:
    saga_id, created = store.create_run(SAGA, {"n": 1})
    assert created and counts(store, saga_id) == (1, 2, 1)
    view = store.get(saga_id)
    assert view.state == "RUNNING" and [s.status for s in view.steps] == ["PENDING", "PENDING"]
    assert view.events[0].type == "SagaCreated"


def test_idempotency_key_returns_the_same_run_or_refuses_other_content(store: SagaStore) -> None:
    key = f"k-{uuid.uuid4()}"
    first, created = store.create_run(SAGA, {"n": 1}, idempotency_key=key)
    again, created_again = store.create_run(SAGA, {"n": 1}, idempotency_key=key)
    assert created and not created_again and again == first
    with pytest.raises(IdempotencyConflict, match=key):
        store.create_run(SAGA, {"n": 2}, idempotency_key=key)
    with store.sessions() as s:
        assert s.scalar(select(func.count()).select_from(SagaRow).where(SagaRow.idempotency_key == key)) == 1


def test_a_stale_message_changes_nothing_and_is_noted(store: SagaStore) -> None:
    saga_id, _ = store.create_run(SAGA, {})
    started = store.apply(SAGA, saga_id, Started(), by="t-start")
    v = started.state.version
    done = store.apply(SAGA, saga_id, ActionSucceeded("a", {"r": 1}), by="t-a", expected_version=v)
    assert done.transition is not None

    replay = store.apply(SAGA, saga_id, ActionSucceeded("a", {"r": 2}), by="t-other", expected_version=v)

    assert replay.stale and not replay.own_commit and replay.transition is None
    assert store.get(saga_id).step("a").result == {"r": 1}
    assert store.get(saga_id).event_types()[-1] == "StaleMessageIgnored"
    # the same message redelivered after its own commit knows it, to re-publish its follow-up
    own = store.apply(SAGA, saga_id, ActionSucceeded("a", {"r": 1}), by="t-a", expected_version=v)
    assert own.stale and own.own_commit


def test_two_writers_racing_on_one_version_make_exactly_one_transition(store: SagaStore) -> None:
    saga_id, _ = store.create_run(SAGA, {})
    v = store.apply(SAGA, saga_id, Started(), by="start").state.version
    results = []
    barrier = threading.Barrier(4)

    def report(n: int) -> None:
        barrier.wait()
        results.append(store.apply(SAGA, saga_id, ActionSucceeded("a", {"writer": n}), by=f"w{n}",
                                   expected_version=v))

    threads = [threading.Thread(target=report, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(r.transition is not None for r in results) == 1
    assert sum(r.stale for r in results) == 3
    view = store.get(saga_id)
    assert view.version == v + 1 and view.event_types().count("StepSucceeded") == 1


def test_an_explicit_saga_id_cannot_be_used_twice(store: SagaStore) -> None:
    from workflows.store import SagaIdTaken

    saga_id = f"mine-{uuid.uuid4()}"
    store.create_run(SAGA, {}, saga_id=saga_id)
    with pytest.raises(SagaIdTaken, match=saga_id):
        store.create_run(SAGA, {"other": True}, saga_id=saga_id)
    assert counts(store, saga_id) == (1, 2, 1)


def test_unknown_saga_id_is_not_found(store: SagaStore) -> None:
    with pytest.raises(SagaNotFound):
        store.get("nope")
    with pytest.raises(SagaNotFound):
        store.apply(SAGA, "nope", Started(), by="x")


# ----------------------------------------------------------- refused at the door (client)


def saga_count(store: SagaStore) -> int:
    with store.sessions() as s:
        return s.scalar(select(func.count()).select_from(SagaRow)) or 0


def test_invalid_input_unknown_saga_and_conflicts_write_nothing(app, order_factory) -> None:  # type: ignore[no-untyped-def]
    from workflows import get_runtime, start_saga

    store = get_runtime().store
    before = saga_count(store)
    bad = order_factory()
    bad["items"][0]["quantity"] = 0
    del bad["payment"]
    with pytest.raises(InvalidInput) as info:
        start_saga("order_fulfillment", bad)
    assert "items.0.quantity" in str(info.value) and "payment" in str(info.value)
    with pytest.raises(UnknownSaga, match="no_such_saga"):
        start_saga("no_such_saga", {})
    with pytest.raises(InvalidInput, match="JSON object"):
        start_saga("tests.three", ["not", "an", "object"])
    assert saga_count(store) == before
