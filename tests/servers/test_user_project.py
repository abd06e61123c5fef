"""A team's own Celery project on the built wheel: nothing from this repository on its path.

The test builds the wheel, installs it with the extras a team would pick (`[postgres,api,testing]`)
into a fresh virtualenv in a temporary folder, and writes a small project there: its own `tasks.py`
(two steps and their compensations), its own Celery app and config, its own FastAPI app calling
`start_saga`. `sagas migrate` makes the schema; a real prefork worker and the app under uvicorn run
from that folder (no PYTHONPATH, the repository nowhere on sys.path) against the real PostgreSQL and
Redis; one checkout completes over HTTP and one is compensated. The team's own saga tests
(`tests/test_sagas.py`, the test kit `workflows.testing`) run with its pytest, no server reachable.

    pytest -m user_project
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.wheel import build_wheel

from tests.support.databases import drop_pg_database, fresh_pg_database

pytestmark = pytest.mark.user_project

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

TASKS = '''
"""The team's steps and their saga."""
from pathlib import Path

from workflows import PermanentError, Saga, Step, StepContext, register_saga, step_task

EFFECTS = Path(__file__).with_name("effects.log")


def note(ctx: StepContext) -> None:
    with EFFECTS.open("a") as f:
        f.write(f"{ctx.saga_id} {ctx.kind} {ctx.step}\\n")


@step_task("stock.reserve", queue="QUEUE")
def reserve(ctx: StepContext, order: dict) -> dict:
    note(ctx)
    return {"reserved": order["quantity"]}


@step_task("stock.release", queue="QUEUE")
def release(ctx: StepContext, order: dict) -> None:
    note(ctx)


@step_task("card.charge", queue="QUEUE")
def charge(ctx: StepContext, order: dict) -> dict:
    note(ctx)
    if order["card"] == "declined":
        raise PermanentError("card declined")
    return {"charged": order["quantity"] * 10}


@step_task("card.refund", queue="QUEUE")
def refund(ctx: StepContext, order: dict) -> None:
    note(ctx)


checkout = register_saga(Saga("checkout", steps=[
    Step("reserve", action=reserve, compensation=release),
    Step("charge", action=charge, compensation=refund),
]))
'''

CELERYCONFIG = '''
"""The team's Celery settings: the library's, and one of their own."""
from workflows.celeryconfig import *  # noqa: F403

worker_concurrency = 2
'''

APP = '''
"""The team's Celery app: `celery -A app worker`."""
from celery import Celery

from workflows import install

app = Celery("team")
app.config_from_object("celeryconfig")
runtime = install(app, modules=["tasks"])
'''

WEB = '''
"""The team's web app: `uvicorn web:app`."""
from fastapi import FastAPI

import app as celery_app  # noqa: F401  (the Celery app and the saga runtime)
from workflows import get_saga, start_saga

from tasks import checkout

app = FastAPI()


@app.post("/orders", status_code=202)
def place(order: dict) -> dict:
    return {"saga_id": start_saga(checkout, order, idempotency_key=f"order-{order['id']}")}


@app.get("/orders/{saga_id}")
def status(saga_id: str) -> dict:
    view = get_saga(saga_id)
    return {"state": view.state, "steps": {s.name: s.status for s in view.steps}}
'''


CONFTEST = '''
"""The team's pytest set-up: the saga test kit."""
pytest_plugins = ["workflows.testing"]
'''

TEST_SAGAS = '''
"""The team's saga tests: its real steps, in process, on SQLite, on a virtual clock; no server."""
from tasks import checkout


def test_a_declined_card_releases_the_stock_it_reserved(saga_kit):
    saga_id = saga_kit.start(checkout, {"id": "o-1", "quantity": 3, "card": "declined"})

    assert saga_kit.state(saga_id) == "COMPENSATED"
    assert [(c.step, c.received) for c in saga_kit.compensations(saga_id)] == [("reserve", {"reserved": 3})]


def test_a_charge_failing_twice_is_retried_on_the_clock(saga_kit):
    saga_kit.fail("card.charge", times=2)
    saga_id = saga_kit.start(checkout, {"id": "o-2", "quantity": 1, "card": "visa"})
    assert saga_kit.state(saga_id) == "RUNNING"

    saga_kit.settle()  # the clock jumps over the retries' backoff

    assert saga_kit.state(saga_id) == "COMPLETED"
    assert [c.attempt for c in saga_kit.actions(saga_id) if c.step == "charge"] == [1, 2, 3]
    assert saga_kit.compensations(saga_id) == []
'''


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The team's folder with its virtualenv (the wheel and its extras), its files and its database."""
    home = tmp_path_factory.mktemp("team")
    dist = home / "dist"
    dist.mkdir()
    wheel = build_wheel(dist)
    venv = home / "venv"
    run([sys.executable, "-m", "venv", str(venv)], home, dict(os.environ))
    run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", f"{wheel}[postgres,api,testing]"],
        home, dict(os.environ), timeout=300)

    src = home / "src"
    (src / "tests").mkdir(parents=True)
    queue = f"team_{uuid.uuid4().hex[:8]}"  # a queue of its own on the shared test broker
    for name, text in {"tasks.py": TASKS.replace("QUEUE", queue), "celeryconfig.py": CELERYCONFIG,
                       "app.py": APP, "web.py": WEB, "conftest.py": CONFTEST,
                       "tests/test_sagas.py": TEST_SAGAS}.items():
        (src / name).write_text(textwrap.dedent(text).lstrip())
    url = fresh_pg_database("user_project")
    # the environment a team's shell has: nothing of this repository's (no PYTHONPATH, no test settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "TEST_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"PATH": f"{venv / 'bin'}:{env.get('PATH', '')}", "SAGA_DATABASE_URL": url,
                "SAGA_BROKER_URL": REDIS_URL, "SAGA_DATA_DIR": str(home / "data"), "SAGA_LOG_LEVEL": "WARNING",
                "TEAM_QUEUE": queue})
    try:
        yield src, env
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="module")
def services(project: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """The team's worker (prefork) and web app, started from its folder; the web app's base URL."""
    src, env = project
    port = free_port()
    logs = [(src / "worker.log").open("w"), (src / "web.log").open("w")]
    procs = [
        subprocess.Popen(["celery", "-A", "app", "worker", "-P", "prefork", "-Q", f"saga,{env['TEAM_QUEUE']}",
                          "-n", f"team-{env['TEAM_QUEUE']}@%h", "--without-gossip", "--without-mingle",
                          "--loglevel=WARNING"], cwd=src, env=env, stdout=logs[0], stderr=subprocess.STDOUT,
                         start_new_session=True),
        subprocess.Popen(["uvicorn", "web:app", "--host", "127.0.0.1", "--port", str(port)], cwd=src, env=env,
                         stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/openapi.json", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"the team's services did not start: {(src / 'web.log').read_text()}"
                                       f"{(src / 'worker.log').read_text()}") from None
                time.sleep(0.2)
        yield base
    finally:
        from tests.support.interfaces import stop_process_group

        for p in procs:
            stop_process_group(p)
        for f in logs:
            f.close()


def until_done(base: str, saga_id: str, src: Path, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = http("GET", f"{base}/orders/{saga_id}")
        if view["state"] in ("COMPLETED", "COMPENSATED", "FAILED"):
            return view  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"{saga_id} still {view}: {(src / 'worker.log').read_text()[-3000:]}")
        time.sleep(0.2)


def test_the_wheel_holds_the_library_and_nothing_of_the_example(project: tuple[Path, dict[str, str]]) -> None:
    src, env = project
    out = run(["python", "-c", "import json, sys, workflows, importlib.util as u; print(json.dumps("
               "[workflows.__file__, [m for m in ('worker', 'api', 'celeryconfig') if u.find_spec(m)], sys.path]))"],
              src.parent, env)
    where, example_modules, path = json.loads(out)
    assert "site-packages" in where and not example_modules
    assert not any(p.startswith(str(ROOT)) for p in path), path
    # `sagas migrate` from the wheel: the saga tables
    assert "schema is at the newest revision" in run(["sagas", "migrate"], src, env)
    # the alert rules are package data of the wheel
    rules = run(["python", "-c", "import workflows.alerts as a; print(a.RULES, a.RULES.is_file())"], src.parent, env)
    assert "site-packages" in rules and rules.strip().endswith("sagas.rules.yml True"), rules


def test_a_teams_project_completes_one_saga_and_compensates_another_over_http(
        project: tuple[Path, dict[str, str]], services: str) -> None:
    src, env = project
    # the team's own `tasks` is the one its worker and web app import (the example shop is not installed)
    run(["sagas", "migrate"], src, env)

    ok = http("POST", f"{services}/orders", {"id": uuid.uuid4().hex, "quantity": 2, "card": "visa"})["saga_id"]
    declined = http("POST", f"{services}/orders",
                    {"id": uuid.uuid4().hex, "quantity": 1, "card": "declined"})["saga_id"]

    assert until_done(services, ok, src) == {"state": "COMPLETED",
                                             "steps": {"reserve": "SUCCEEDED", "charge": "SUCCEEDED"}}
    assert until_done(services, declined, src) == {"state": "COMPENSATED",
                                                   "steps": {"reserve": "COMPENSATED", "charge": "FAILED"}}
    effects = (src / "effects.log").read_text().splitlines()
    assert [e.split(" ", 1)[1] for e in effects if e.startswith(ok)] == ["action reserve", "action charge"]
    assert [e.split(" ", 1)[1] for e in effects if e.startswith(declined)] == [
        "action reserve", "action charge", "compensation reserve"]
    # the operator's CLI finds the team's app in the current folder, as `celery -A` does
    status = run(["sagas", "--app", "app", "status", declined, "--json"], src, env)
    assert json.loads(status)["state"] == "COMPENSATED"


def test_a_teams_saga_tests_run_on_the_test_kit_with_no_server(project: tuple[Path, dict[str, str]]) -> None:
    src, env = project
    # no server reachable: the database and broker the team's settings name are closed ports
    offline = env | {"SAGA_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
                     "SAGA_BROKER_URL": "redis://127.0.0.1:1/0"}
    out = run(["pytest", "-q", "-p", "no:cacheprovider", "tests/test_sagas.py"], src, offline)
    assert "2 passed" in out, out
