"""The `sagas` command, through click's runner and as a real console script.

Given an operator at a terminal, when they start, inspect and repair sagas, then the output
says what happened, scripts get JSON, and refusals exit 1 with the reason on stderr.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import psycopg2
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from tests.support.databases import plain_engine
from tests.support.interfaces import failed_saga, new_id, saga_count, wait_until
from workflows import get_saga, start_saga, wait_for
from workflows.interfaces.cli import main

pytestmark = pytest.mark.usefixtures("running_worker")

ROOT = Path(__file__).resolve().parents[2]
SAGAS = Path(sys.executable).parent / "sagas"
PG_URL = os.environ["TEST_PG_URL"]  # set by conftest


def env(**extra: str) -> dict[str, str]:
    """This process's environment (the test broker and database) for a subprocess."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def sagas(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def test_start_prints_the_id_and_status_shows_the_timeline():  # type: ignore[no-untyped-def]
    started = sagas("start", "tests.three", "--data", '{"behaviour": {"a": {"fail_times": 1}}}')

    assert started.exit_code == 0, started.output
    saga_id = started.stdout.strip()
    assert wait_for(saga_id, timeout=30).state == "COMPLETED"
    shown = sagas("status", saga_id)
    assert shown.exit_code == 0
    for text in (saga_id, "tests.three", "COMPLETED", "steps", "history", "StepAttemptFailed", "SagaCompleted"):
        assert text in shown.stdout
    as_json = json.loads(sagas("status", saga_id, "--json").stdout)
    assert as_json["state"] == "COMPLETED"
    assert [(s["name"], s["attempts"]) for s in as_json["steps"]] == [("a", 2), ("b", 1), ("c", 1)]


def test_status_finds_a_run_by_the_idempotency_key_it_was_started_under():  # type: ignore[no-untyped-def]
    key = f"order-{new_id()}"
    saga_id = sagas("start", "tests.three", "--data", "{}", "--idempotency-key", key).stdout.strip()
    assert wait_for(saga_id, timeout=30).state == "COMPLETED"

    by_key = json.loads(sagas("status", key, "--json").stdout)
    explicit = json.loads(sagas("status", key, "--key", "--json").stdout)

    assert by_key["id"] == explicit["id"] == saga_id and by_key["idempotency_key"] == key
    refused = sagas("status", saga_id, "--key")
    assert refused.exit_code == 1 and f"no saga with idempotency key '{saga_id}'" in refused.stderr


def test_start_wait_prints_only_its_own_output_on_stdout():  # type: ignore[no-untyped-def]
    """The worker module's JSON logs (INFO, as a worker runs it) stay out of a command's output."""
    quiet = {k: v for k, v in env().items() if k != "SAGA_LOG_LEVEL"}

    as_json = subprocess.run([str(SAGAS), "start", "tests.three", "--data", "{}", "--wait", "--json"], cwd=ROOT,
                             env=quiet, capture_output=True, text=True, timeout=120)
    shown = subprocess.run([str(SAGAS), "start", "tests.three", "--data", "{}", "--wait"], cwd=ROOT, env=quiet,
                           capture_output=True, text=True, timeout=120)
    asked = subprocess.run([str(SAGAS), "start", "tests.three", "--data", "{}"], cwd=ROOT,
                           env={**quiet, "SAGA_LOG_LEVEL": "INFO"}, capture_output=True, text=True, timeout=120)

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["state"] == "COMPLETED"  # stdout is the JSON document and nothing else
    assert shown.returncode == 0 and shown.stdout.startswith("saga ") and '"level"' not in shown.stdout
    assert '"level": "INFO"' not in as_json.stderr + shown.stderr
    # who asks for the logs gets them, on stderr
    assert asked.returncode == 0 and '"level": "INFO"' in asked.stderr and '"level"' not in asked.stdout


def test_start_reads_a_file_waits_and_honours_the_idempotency_key(tmp_path, order_factory):  # type: ignore[no-untyped-def]
    order = tmp_path / "order.json"
    order.write_text(json.dumps(order_factory()))
    key = f"order-{new_id()}"

    done = sagas("start", "order_fulfillment", "--data", f"@{order}", "--idempotency-key", key, "--wait", "--json")
    again = sagas("start", "order_fulfillment", "--data", "-", "--idempotency-key", key, input=order.read_text())

    assert done.exit_code == 0, done.output
    view = json.loads(done.stdout)
    assert view["state"] == "COMPLETED" and view["idempotency_key"] == key
    assert again.exit_code == 0 and again.stdout.strip() == view["id"]


@pytest.mark.parametrize("args,code,message", [
    (["start", "tests.three", "--data", "{nope"], 2, "not valid JSON"),
    (["start", "tests.three"], 2, "Missing option '--data'"),
    (["start", "no_such_saga", "--data", "{}"], 1, "unknown saga 'no_such_saga'"),
    (["start", "order_fulfillment", "--data", '{"order_id": "o-1"}'], 1, "invalid input for saga 'order_fulfillment'"),
    (["status", "cli-no-such-saga"], 1, "no saga with id 'cli-no-such-saga'"),
    (["list", "--state", "DONE"], 2, "Invalid value for '--state'"),
    (["cancel", "cli-no-such-saga"], 2, "Missing option '--reason'"),
    (["dlq", "show", "no-such-letter"], 1, "no dead letter with id 'no-such-letter'"),
])
def test_refusals_exit_non_zero_with_the_reason_on_stderr(args, code, message):  # type: ignore[no-untyped-def]
    before = saga_count()

    r = sagas(*args)

    assert r.exit_code == code, r.output
    assert message in r.stderr
    assert r.stdout == ""
    assert saga_count() == before


def test_list_filters_by_state_and_type(redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)

    table = sagas("list", "--state", "failed", "--type", "tests.three")
    as_json = json.loads(sagas("list", "--state", "FAILED", "--type", "tests.three", "--json").stdout)

    assert table.exit_code == 0 and saga_id in table.stdout and "FAILED" in table.stdout
    assert saga_id in [i["id"] for i in as_json["items"]]
    assert {i["state"] for i in as_json["items"]} == {"FAILED"} and as_json["total"] >= 1
    redis_client.delete(f"switch:{saga_id}:a")


def test_cancel_compensates_a_running_saga_and_refuses_a_second_time():  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.three", {"behaviour": {"b": {"sleep": 1.5}}})
    wait_until(lambda: get_saga(saga_id).step("b").status == "RUNNING")

    r = sagas("--who", "frank", "cancel", saga_id, "--reason", "customer asked")

    assert r.exit_code == 0, r.output
    assert f"saga {saga_id} cancelled: now COMPENSAT" in r.stdout
    view = wait_for(saga_id, timeout=30)
    assert view.state == "COMPENSATED"
    assert next(e for e in view.events if e.type == "SagaCancelled").detail["who"] == "frank"
    again = sagas("cancel", saga_id, "--reason", "twice")
    assert again.exit_code == 1 and "only a RUNNING saga can be cancelled" in again.stderr


def test_dead_letter_is_listed_shown_and_redriven_once(redis_client):  # type: ignore[no-untyped-def]
    saga_id = failed_saga(redis_client)

    listed = json.loads(sagas("dlq", "list", "--saga", saga_id, "--json").stdout)
    [dl] = listed
    table = sagas("dlq", "list", "--saga", saga_id)
    shown = sagas("dlq", "show", dl["id"])
    assert dl["id"] in table.stdout and "compensation" in table.stdout
    assert shown.exit_code == 0 and "Traceback" in shown.stdout and "tests.compensate" in shown.stdout
    assert json.loads(sagas("dlq", "show", dl["id"], "--json").stdout)["status"] == "OPEN"

    redis_client.delete(f"switch:{saga_id}:a")
    redriven = sagas("--who", "gina", "dlq", "redrive", dl["id"], "--reason", "fixed")

    assert redriven.exit_code == 0 and f"dead letter {dl['id']} redriven" in redriven.stdout
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    twice = sagas("dlq", "redrive", dl["id"])
    assert twice.exit_code == 1 and "handled already" in twice.stderr
    assert json.loads(sagas("dlq", "list", "--saga", saga_id, "--json").stdout) == []
    assert [d["status"] for d in json.loads(sagas("dlq", "list", "--saga", saga_id, "--status", "all",
                                                  "--json").stdout)] == ["REDRIVEN"]


def test_resume_and_retry_of_a_stuck_compensation_resolve_its_dead_letter(redis_client):  # type: ignore[no-untyped-def]
    resumed, retried = failed_saga(redis_client), failed_saga(redis_client)
    for saga_id in (resumed, retried):
        redis_client.delete(f"switch:{saga_id}:a")

    r1 = sagas("--who", "ivan", "resume", resumed, "--reason", "fixed")
    r2 = sagas("retry", retried, "--step", "a")

    assert r1.exit_code == 0 and "resumed" in r1.stdout
    assert r2.exit_code == 0 and "retried" in r2.stdout
    assert wait_for(resumed, timeout=30).state == wait_for(retried, timeout=30).state == "COMPENSATED"
    assert sagas("resume", resumed).exit_code == 1
    for saga_id in (resumed, retried):
        assert json.loads(sagas("dlq", "list", "--saga", saga_id, "--json").stdout) == []
    [dl] = json.loads(sagas("dlq", "list", "--saga", resumed, "--status", "all", "--json").stdout)
    assert (dl["status"], dl["resolution"]) == ("REDRIVEN", "resumed by ivan")


def test_discard_needs_a_reason_and_is_recorded():  # type: ignore[no-untyped-def]
    view = wait_for(start_saga("tests.three", {"behaviour": {"c": {"fail_times": 99}}}), timeout=30)
    [dl] = json.loads(sagas("dlq", "list", "--saga", view.id, "--json").stdout)

    assert sagas("dlq", "discard", dl["id"]).exit_code == 2  # a reason is required
    discarded = sagas("dlq", "discard", dl["id"], "--reason", "customer re-ordered")

    assert discarded.exit_code == 0 and "discarded" in discarded.stdout
    assert "DeadLetterDiscarded" in get_saga(view.id).event_types()


def test_sweep_times_out_a_step_nobody_consumes():  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.orphan", {})
    wait_until(lambda: get_saga(saga_id).step("lost").status == "RUNNING")
    deadline = get_saga(saga_id).step("lost").deadline_at

    report = wait_until(lambda: (r := json.loads(sagas("sweep", "--json").stdout))["timed_out"] and r)

    assert datetime.now(timezone.utc) >= deadline
    assert f"{saga_id}:lost" in report["timed_out"]
    assert report["counts"]["timed_out"] == len(report["timed_out"])
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    again = sagas("sweep")
    assert again.exit_code == 0 and "timed out:" in again.stdout and saga_id not in again.stdout


# ------------------------------------------------------------------ the real console script


def test_sagas_console_script_migrates_a_fresh_database():  # type: ignore[no-untyped-def]
    assert SAGAS.exists(), f"{SAGAS} is missing: run `pip install -e .`"
    name = f"{make_url(PG_URL).database}_cli_migrate"
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        done = subprocess.run([str(SAGAS), "migrate"], cwd=ROOT, env=env(SAGA_DATABASE_URL=url),
                              capture_output=True, text=True, timeout=120)

        assert done.returncode == 0, done.stderr
        assert f"{name}: migrated from an empty database to " in done.stdout, done.stdout
        assert "schema is at the newest revision" in done.stdout
        engine = plain_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"sagas", "saga_steps", "saga_events", "dead_letters"} <= tables
        assert not tables & {"payments", "shipments", "inventory_stock"}  # the example shop's are its own
        engine.dispose()
        assert f"{len(tables) - 1} table(s) created" in done.stdout  # what it did, alembic_version aside
        again = subprocess.run([str(SAGAS), "migrate"], cwd=ROOT, env=env(SAGA_DATABASE_URL=url),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and f"{name}: nothing to apply, already at " in again.stdout, again.stdout
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_sagas_console_script_reads_a_saga_as_json():  # type: ignore[no-untyped-def]
    saga_id = start_saga("tests.three", {})
    wait_for(saga_id, timeout=30)

    done = subprocess.run([str(SAGAS), "status", saga_id, "--json"], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=120)
    missing = subprocess.run([str(SAGAS), "status", "cli-no-such-saga"], cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "COMPLETED"
    assert missing.returncode == 1 and "no saga with id 'cli-no-such-saga'" in missing.stderr


# ------------------------------------------------------------------ --app: the deployment's module, as for celery -A


@pytest.mark.parametrize("how", ["option", "env"])
def test_an_app_module_that_cannot_be_imported_is_refused_with_the_reason(how):  # type: ignore[no-untyped-def]
    if how == "option":
        args, environ = ["--app", "no_such_app_module"], None
    else:
        args, environ = [], {"SAGA_APP": "no_such_app_module"}

    r = CliRunner().invoke(main, [*args, "status", "cli-no-such-saga"], env=environ)

    assert r.exit_code == 1, r.output
    assert "cannot import the Celery app module 'no_such_app_module' (--app, env SAGA_APP)" in r.stderr
    assert "No module named 'no_such_app_module'" in r.stderr
    assert r.stdout == ""


def test_help_and_migrate_need_no_app_module_and_a_module_without_a_runtime_is_refused(tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    no_app = env(SAGA_APP="no_such_app_module", SAGA_DATABASE_URL=url)

    shown = subprocess.run([str(SAGAS), "--help"], cwd=tmp_path, env=no_app, capture_output=True, text=True,
                           timeout=120)
    migrated = subprocess.run([str(SAGAS), "migrate"], cwd=tmp_path, env=no_app, capture_output=True, text=True,
                              timeout=120)
    no_runtime = subprocess.run([str(SAGAS), "--app", "json", "status", "x"], cwd=ROOT, env=env(),
                                capture_output=True, text=True, timeout=120)

    assert shown.returncode == 0 and "--app" in shown.stdout and "SAGA_APP" in shown.stdout
    assert "demo" not in shown.stdout.split("Commands:")[1]  # the demo is the example's: make demo
    assert migrated.returncode == 0, migrated.stderr
    assert "schema is at the newest revision" in migrated.stdout
    assert no_runtime.returncode == 1
    assert "the module 'json' (--app, env SAGA_APP) installed no saga runtime" in no_runtime.stderr


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_database_without_the_saga_tables_is_refused_naming_sagas_migrate(backend, tmp_path):  # type: ignore[no-untyped-def]
    from tests.support.databases import drop_pg_database, fresh_pg_database

    url = fresh_pg_database("cli_unmigrated") if backend == "postgresql" else f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        listed = subprocess.run([str(SAGAS), "list"], cwd=ROOT, env=env(SAGA_DATABASE_URL=url),
                                capture_output=True, text=True, timeout=120)
        shown = subprocess.run([str(SAGAS), "status", "order-123"], cwd=ROOT, env=env(SAGA_DATABASE_URL=url),
                               capture_output=True, text=True, timeout=120)
    finally:
        if backend == "postgresql":
            drop_pg_database(url)

    for done in (listed, shown):
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert "the saga tables are missing or behind this version" in done.stderr
        assert done.stderr.rstrip().endswith("run `sagas migrate`"), done.stderr
        assert "sagas" in done.stderr  # the missing table, as the database names it
