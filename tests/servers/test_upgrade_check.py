"""The upgrade check (`check_upgrade`, `sagas check-upgrade`): before a deploy, which runs in flight
the loaded code can drive to their end, which it would strand, and a move's plan diff.

Runs are started on version 1 and left in flight (their messages recorded, not delivered); "the
code being deployed" is this process's registry, with version 1 taken out (`registry.unregister`)
where a deploy would delete it. SQLite in a temporary folder; the stranded case on PostgreSQL too.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from workflows.testing import Clock
from workflows import RetryPolicy, Saga, Step, StepContext, check_upgrade, registry, start_saga, step_task
from workflows.core.state import IdSource
from workflows.interfaces.cli import main
from workflows.operations.versions import check_definitions
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.store.db import migrate as migrate_db


def work(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"step": ctx.step}


act = step_task("upg.act", queue="upg")(work)
undo = step_task("upg.undo", queue="upg")(work)
cancel_ship = step_task("upg.cancel_ship", queue="upg")(work)
ONCE = RetryPolicy(max_attempts=1)
NAME = "upg.order"


def v1() -> Saga:
    return Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=undo, retry=ONCE),
        Step("charge", action=act, compensation=undo, retry=ONCE),
        Step("ship", action=act, compensation=None, retry=ONCE),
    ])


def v2() -> Saga:
    """v1 with ship's compensation declared, and the charge undone when it fails: a v1 run that has
    not shipped may move to it."""
    return Saga(NAME, version=2, steps=[
        Step("reserve", action=act, compensation=undo, retry=ONCE),
        Step("charge", action=act, compensation=undo, retry=ONCE, compensate_failure=True),
        Step("ship", action=act, compensation=cancel_ship, retry=ONCE),
    ])


registry.register(v1())
registry.register(v2())
# a saga whose action is a task no @step_task registers (deleted from the code being deployed)
registry.register(Saga("upg.lost", steps=[Step("a", action="upg.deleted_task", compensation=None)]))


def runtime_on(url: str, tmp_path: Path) -> Runtime:
    migrate_db(url)
    counter = itertools.count(1)
    return Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path), clock=Clock(),
                   ids=lambda: f"{next(counter):08x}{'0' * 24}", _dispatcher=RecordingDispatcher())


@pytest.fixture
def saga_ids() -> IdSource:  # `rt` (tests/conftest.py) is the kit's runtime on SQLite, with these ids
    counter = itertools.count(1)
    return lambda: f"{next(counter):08x}{'0' * 24}"


@pytest.fixture
def without_v1() -> Iterator[Any]:
    """`without_v1()`: the code being deployed no longer registers version 1 (restored after)."""
    taken: list[Saga] = []
    yield lambda: taken.append(registry.unregister(NAME, 1))
    for saga in taken:
        registry.register(saga)


def in_flight_on_v1(rt: Runtime, n: int = 2) -> list[str]:
    """`n` runs started on version 1, left in flight; the worker of that deploy recorded its shapes."""
    check_definitions(rt)
    return [start_saga(NAME, {"n": i}, version=1) for i in range(n)]


def test_green_when_v1_is_kept_beside_v2_with_the_plan_diff_of_a_move(rt: Runtime) -> None:
    # Given two runs in flight on v1, and code that registers v1 beside v2
    ids = in_flight_on_v1(rt)

    # When the upgrade is checked
    report = check_upgrade(rt.store)

    # Then every run can be driven to its end, and a move to v2 would change its plan so
    assert report.ok and sorted(r.saga_id for r in report.runs) == sorted(ids)
    [version] = report.versions
    assert (version.saga_type, version.saga_version, version.registered, version.newest) == (NAME, 1, True, 2)
    run = version.runs[0]
    assert run.drivable and run.state == "RUNNING" and run.move_refused is None and run.move is not None
    assert run.move.remaining_before == run.move.remaining_after == [
        "reserve: upg.act", "charge: upg.act", "ship: upg.act"]
    assert run.move.compensation_before == ["ship: nothing to undo", "charge: upg.undo", "reserve: upg.undo"]
    assert run.move.compensation_after == ["ship: upg.cancel_ship", "charge: upg.undo", "reserve: upg.undo"]
    assert run.move.changes == ["ship: nothing to undo → ship: upg.cancel_ship"]


def test_red_naming_the_stranded_runs_when_v1_is_removed(rt: Runtime, without_v1: Any) -> None:
    ids = in_flight_on_v1(rt)
    without_v1()  # the deploy deletes v1

    report = check_upgrade(rt.store)

    assert not report.ok and sorted(r.saga_id for r in report.stranded) == sorted(ids)
    run = report.stranded[0]
    assert run.stranded_by == [f"version 1 of saga {NAME!r} is no longer registered (registered: 2)"]
    # the recorded shape of v1 still tells how a move would change the plan: the way out
    assert run.move is not None and run.move.changes == ["ship: nothing to undo → ship: upg.cancel_ship"]


def test_a_run_past_what_the_move_allows_is_refused_with_the_reason(rt: Runtime, without_v1: Any) -> None:
    [saga_id] = in_flight_on_v1(rt, 1)
    without_v1()
    with rt.store.sessions() as s:  # no worker ever recorded v1: its steps are unknown
        s.execute(text("DELETE FROM saga_definitions"))
        s.commit()

    [run] = check_upgrade(rt.store).stranded

    assert run.saga_id == saga_id and run.move is None
    assert run.move_refused == ("version 1 is neither registered here nor recorded in the database: "
                                "its steps are unknown")


def test_a_task_gone_from_the_code_strands_the_runs_that_still_need_it(rt: Runtime) -> None:
    saga_id = start_saga("upg.lost", {})

    report = check_upgrade(rt.store)

    [run] = report.stranded
    assert run.saga_id == saga_id and run.stranded_by == [
        "step 'a': its action task 'upg.deleted_task' is registered by no @step_task"]


def test_the_cli_exits_3_naming_the_stranded_runs_and_0_when_green(rt: Runtime, without_v1: Any) -> None:
    ids = in_flight_on_v1(rt)
    cli = CliRunner()

    green = cli.invoke(main, ["--app", "workflows", "check-upgrade"])
    assert green.exit_code == 0, green.output
    assert "2 run(s) in flight, 0 would be stranded" in green.output and "ship: upg.cancel_ship" in green.output

    without_v1()
    red = cli.invoke(main, ["--app", "workflows", "check-upgrade"])
    assert red.exit_code == 3, red.output
    assert all(i in red.output for i in ids) and "STRANDED: version 1" in red.output
    as_json = cli.invoke(main, ["--app", "workflows", "check-upgrade", "--json"])
    assert as_json.exit_code == 3
    body = json.loads(as_json.output)
    assert body["ok"] is False and sorted(body["stranded"]) == sorted(ids)


def test_on_postgresql_the_stranded_runs_are_named(database: str, tmp_path: Path, without_v1: Any) -> None:
    runtime = runtime_on(database, tmp_path)
    with activate(runtime):
        ids = in_flight_on_v1(runtime)
        assert {r.saga_id for r in check_upgrade(runtime.store).runs if r.saga_type == NAME} >= set(ids)
        without_v1()
        report = check_upgrade(runtime.store)
    mine = {r.saga_id: r for r in report.stranded if r.saga_type == NAME}
    assert set(ids) <= set(mine) and not report.ok
    assert all(mine[i].stranded_by == [f"version 1 of saga {NAME!r} is no longer registered (registered: 2)"]
               for i in ids)
