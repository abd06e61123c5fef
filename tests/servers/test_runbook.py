"""The runbook (docs/operations/runbook.md), run as written on sagas stuck each way it covers.

The commands are read from the page: every `sagas`, `curl` and `celery` line of its ```bash blocks
and every such command in its prose (`...`). Each one is run for real with the page's placeholders
(<saga id>, <dead letter id>, <saga type>, <step>, <your app>, "...", $API, $AUTH) replaced by
the values of a real stuck saga: `sagas` through click's runner in this process (the same SAGA_*
settings as the workers), `curl` with bash against the API served by uvicorn, `celery` as a
subprocess. Every command must exit 0 (a curl: answer 2xx), and the saga must move as the page
says. A command on the page that no scenario below runs is run by the last test on a fresh stuck
saga of its section: a command added to the page that does not work fails this module.

Given a real worker (prefork, its own queue `runbook`; tests/support/runbook_sagas.py), Redis and
PostgreSQL. A saga is made stuck with the Redis switch of tests.support.sagas.behave; "fix the
cause" deletes the switch.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import tests.support.runbook_v1  # noqa: F401  (this process holds version 1 of runbook.versioned; no worker does)
from tests.support.workers import WorkerProcess, worker_env
from tests.support.interfaces import stop_process_group, wait_until
from tests.support.runbook_sagas import VERSIONED
from workflows import get_runtime, get_saga, start_saga, wait_for
from workflows.core.errors import InvalidOperation
from workflows.interfaces.cli import main
from workflows.operations.dead_letters import redrive
from workflows.operations.versions import version_report

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "operations" / "runbook.md"
MODULES = "tests.support.sagas,tests.support.runbook_sagas"
TOKEN = "runb00k-token"

ILLUSTRATIVE = {
    "sagas --who alice ...": "names the --who option in the introduction; the actions below run with it",
    "sagas dlq show": "names the command in prose; its runnable form `sagas dlq show <dead letter id>` is run",
    "sagas status": "names the command in prose; its runnable form `sagas status <saga id>` is run",
    "celery -A <your app> beat": "starts the scheduler, a daemon that runs until stopped: deployment, not a check",
}
"""Commands of the page that are not run, each with the reason. Anything else on the page is run."""

# ------------------------------------------------------------------ the page


@dataclass(frozen=True)
class Command:
    section: str
    text: str
    """As written: continuation lines joined, a trailing comment kept (the shell drops it)."""

    @property
    def program(self) -> str:
        return self.text.split()[0]

    def __str__(self) -> str:
        return f"[{self.section}] {self.text}"


def read_page() -> list[Command]:
    """The page's commands in page order, each with the heading it is under."""
    found: list[Command] = []
    section = ""
    lines = PAGE.read_text().splitlines()
    in_block, block_lang, prose = False, "", ""

    def inline(paragraph: str) -> None:
        paragraph = " ".join(paragraph.split())
        for span, body in re.findall(r"`([^`]+)`(?: with `(\{[^`]*\})`)?", paragraph):
            if span.split()[0] in ("sagas", "celery", "curl"):
                found.append(Command(section, span))
            elif re.match(r"(GET|POST) /", span):  # an HTTP call in prose, with its body if the page gives one
                found.append(Command(section, f"{span} {body}".strip()))

    for line in lines:
        if line.startswith("```"):
            if not in_block:
                inline(prose)
                prose = ""
                in_block, block_lang, pending = True, line[3:].strip(), ""
            else:
                in_block = False
            continue
        if in_block:
            assert block_lang == "bash", f"{PAGE.name}: a ```{block_lang} block under {section!r}: use ```bash"
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip() + " "
                continue
            command, pending = " ".join(pending.split()), ""
            if command and not command.startswith("#"):
                assert command.split()[0] in ("sagas", "curl", "celery"), (
                    f"{PAGE.name}: `{command}` under {section!r} is a command this test cannot run: "
                    "teach tests/servers/test_runbook.py to run it")
                found.append(Command(section, command))
        elif line.startswith("#"):
            inline(prose)
            prose, section = "", line.lstrip("#").strip()
        else:
            prose += " " + line if line.strip() else "\n\n"
            if not line.strip():
                inline(prose)
                prose = ""
    inline(prose)
    return found


COMMANDS = read_page()
RAN: set[Command] = set()
"""The page's commands a test ran (and that worked)."""


def command(section: str, prefix: str) -> Command:
    """The page's one command under the heading containing `section` that starts with `prefix`."""
    matches = [c for c in COMMANDS if section in c.section and c.text.startswith(prefix)]
    assert len(matches) == 1, (f"{PAGE.name} should have one command starting with {prefix!r} under a heading "
                               f"containing {section!r}; found {[c.text for c in matches]}")
    return matches[0]


# ------------------------------------------------------------------ running a command as written


def substitute(cmd: Command, values: dict[str, str]) -> str:
    text = cmd.text.replace('"..."', '"runbook test"').replace("<your app>", "worker")
    for placeholder, value in values.items():
        text = text.replace(f"<{placeholder}>", value)
    left = [p for token in shlex.split(text, comments=True) for p in re.findall(r"<[a-z][a-z ]*>", token)]
    assert not left, f"{cmd}: no value for the placeholder(s) {left}: give one in tests/servers/test_runbook.py"
    return text


def run(cmd: Command, api: str = "", **values: str) -> str:
    """Run the page's command with `values` for its placeholders; return its output (a failure
    fails the test, naming the command as the page writes it)."""
    text = substitute(cmd, {k.replace("_", " "): v for k, v in values.items()})
    if cmd.program == "sagas":
        result = CliRunner().invoke(main, shlex.split(text, comments=True)[1:])
        assert result.exit_code == 0, f"{cmd}\n  ran as: {text}\n  exit {result.exit_code}: {result.output}"
        out = result.stdout
    elif cmd.program in ("GET", "POST"):
        method, path, *body = text.split(" ", 2)
        answer = httpx.request(method, api + path, json=json.loads(body[0]) if body else None, timeout=30,
                               headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.is_success, f"{cmd}\n  ran as: {text}\n  answered {answer.status_code}: {answer.text}"
        out = answer.text
    elif cmd.program == "curl":
        # --fail-with-body: an answer other than 2xx fails the line, and the script
        script = "set -euo pipefail\ncurl() { command curl --fail-with-body \"$@\"; }\n" + text
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "API": api, "AUTH": f"Authorization: Bearer {TOKEN}"})
        assert done.returncode == 0, f"{cmd}\n  ran as: {text}\n  exit {done.returncode}: {done.stdout}{done.stderr}"
        out = done.stdout
    else:
        argv = [sys.executable, "-m", *shlex.split(text, comments=True)]
        assert not is_server(text), f"{cmd}: a server that runs until stopped: start it with start()"
        done = subprocess.run(argv, cwd=ROOT, env=worker_env(SAGA_EXTRA_MODULES=MODULES), capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, f"{cmd}\n  ran as: {text}\n  exit {done.returncode}: {done.stdout}{done.stderr}"
        out = done.stdout
    RAN.add(cmd)
    return out


def is_server(text: str) -> bool:
    """`celery -A <app> worker|beat ...`: runs until stopped."""
    tokens = shlex.split(text, comments=True)
    return tokens[:2] == ["celery", "-A"] and tokens[3:4] in (["worker"], ["beat"])


def start(cmd: Command, log: Path, **values: str) -> subprocess.Popen[bytes]:
    """Start the page's command for a server (`celery -A <your app> worker ...`) in a subprocess of
    its own session; the caller stops it (tests.support.interfaces.stop_process_group)."""
    text = substitute(cmd, {k.replace("_", " "): v for k, v in values.items()})
    assert is_server(text), f"{cmd}: not a server: run it with run()"
    argv = [sys.executable, "-m", *shlex.split(text, comments=True), "--loglevel=WARNING"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=worker_env(SAGA_EXTRA_MODULES=MODULES), stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    RAN.add(cmd)
    return proc


# ------------------------------------------------------------------ the servers and the stuck sagas


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def runbook_worker(app: Any) -> Iterator[WorkerProcess]:
    w = WorkerProcess(f"runbook-{uuid.uuid4().hex[:6]}", "runbook", concurrency=2,
                      env=worker_env(SAGA_EXTRA_MODULES=MODULES))
    try:
        w.wait_ready(app, timeout=60)
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def api(app: Any) -> Iterator[str]:
    """`uvicorn api:app` on a free loopback port, with a bearer token."""
    port = free_port()
    log = Path(f"/tmp/saga-test-runbook-uvicorn-{os.getpid()}-{port}.log")
    # the single token's caller is recorded as SAGA_API_TOKEN_NAME (X-Operator is only a note, issue 31)
    env = worker_env(SAGA_EXTRA_MODULES=MODULES, SAGA_API_TOKEN=TOKEN, SAGA_API_TOKEN_NAME="alice")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "api:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=30, what="the API answering")
        yield base
    finally:
        stop_process_group(proc)


pytestmark = pytest.mark.usefixtures("runbook_worker")


def new_id(kind: str) -> str:
    return f"rb-{kind}-{uuid.uuid4().hex[:10]}"


def switch_off(redis_client: Any, saga_id: str, step: str) -> None:
    redis_client.set(f"switch:{saga_id}:{step}", 1, ex=600)


def fix(redis_client: Any, saga_id: str, step: str) -> None:
    """The operator fixes the cause: the step's service works again."""
    redis_client.delete(f"switch:{saga_id}:{step}")


def failed(redis_client: Any) -> tuple[str, str]:
    """A runbook.order whose ship failed for good and whose reserve compensation ran out of retries:
    FAILED, with one open dead letter. Returns (saga id, dead letter id)."""
    saga_id = new_id("failed")
    switch_off(redis_client, saga_id, "reserve")
    start_saga("runbook.order", {"behaviour": {"ship": {"fail": "permanent"}},
                                 "compensation_behaviour": {"reserve": {"switch": True}}}, saga_id=saga_id)
    assert wait_for(saga_id, timeout=30).state == "FAILED"
    [dl] = get_runtime().store.dead_letters(saga_id=saga_id)
    assert (dl.kind, dl.step) == ("compensation", "reserve")
    return saga_id, dl.id


def compensating(redis_client: Any) -> str:
    """A runbook.order rolling back whose charge compensation failed once and waits ten minutes to retry."""
    saga_id = new_id("compensating")
    switch_off(redis_client, saga_id, "charge")
    start_saga("runbook.order", {"behaviour": {"ship": {"fail": "permanent"}},
                                 "compensation_behaviour": {"charge": {"switch": True}}}, saga_id=saga_id)
    wait_until(lambda: "CompensationAttemptFailed" in get_saga(saga_id).event_types(), 30, f"{saga_id} retrying")
    assert get_saga(saga_id).state == "COMPENSATING"
    return saga_id


def retrying(redis_client: Any) -> str:
    """A runbook.order whose ship action failed once and waits ten minutes to retry: RUNNING, nothing moves."""
    saga_id = new_id("running")
    switch_off(redis_client, saga_id, "ship")
    start_saga("runbook.order", {"behaviour": {"ship": {"switch": True}}}, saga_id=saga_id)
    wait_until(lambda: "StepAttemptFailed" in get_saga(saga_id).event_types(), 30, f"{saga_id} retrying")
    assert get_saga(saga_id).state == "RUNNING"
    return saga_id


def unheld() -> str:
    """A runbook.versioned run on version 1, which no worker holds: RUNNING, its step handed on."""
    saga_id = start_saga(VERSIONED, {}, saga_id=new_id("v1"), version=1)
    wait_until(lambda: "StepHandedOn" in get_saga(saga_id).event_types(), 30, f"{saga_id}: its v1 step handed on")
    return saga_id


def waiting() -> str:
    saga_id = start_saga("runbook.sign_off", {}, saga_id=new_id("waiting"))
    wait_until(lambda: get_saga(saga_id).state == "WAITING", 30, f"{saga_id} WAITING")
    return saga_id


def check(saga_id: str, state: str) -> None:
    """Section 4: the run is terminal, the operator's action is in its history, no dead letter is open."""
    wait_until(lambda: get_saga(saga_id).state == state, 30, f"{saga_id} {state}")
    shown = run(command("Check", "sagas status <saga id>"), saga_id=saga_id)
    assert saga_id in shown and state in shown
    assert get_runtime().store.dead_letters(saga_id=saga_id) == []
    run(command("Check", "sagas dlq list --saga <saga id>"), saga_id=saga_id)


def timeline(saga_id: str) -> dict[str, Any]:
    """The page's `sagas status <saga id> --json`: the run, whole."""
    return dict(json.loads(run(command("Read its timeline", "sagas status <saga id> --json"), saga_id=saga_id)))


def step_of(whole: dict[str, Any], name: str) -> dict[str, Any]:
    [step] = [s for s in whole["steps"] if s["name"] == name]
    return dict(step)


def acted(saga_id: str, reason: str) -> list[dict[str, Any]]:
    """The history events that record an operator's action with `reason`."""
    return [e.detail for e in get_saga(saga_id).events if (e.detail or {}).get("reason") == reason]


# ------------------------------------------------------------------ FAILED: a compensation ran out of retries


def test_failed_found_read_and_redriven_from_the_command_line(redis_client: Any, api: str) -> None:
    saga_id, dl_id = failed(redis_client)

    # 1. find it
    assert saga_id in run(command("Find it", "sagas list --state FAILED"))
    page = json.loads(run(command("Find it", "curl -s \"$API/api/sagas?state=FAILED"), api))
    assert saga_id in [s["id"] for s in page["items"]]
    # 2. read its timeline
    shown = run(command("Read its timeline", "sagas status <saga id> #"), saga_id=saga_id)
    assert saga_id in shown and "FAILED" in shown
    whole = timeline(saga_id)
    assert whole["state"] == "FAILED" and whole["failure_reason"]
    assert step_of(whole, "reserve")["status"] == "COMPENSATION_FAILED"
    assert [d["id"] for d in whole["dead_letters"]] == [dl_id]
    status = json.loads(run(command("Read its timeline", "curl -s $API/api/sagas/<saga id>/status"), api,
                            saga_id=saga_id))
    assert status["state"] == "FAILED" and status["open_dead_letters"] == [dl_id]
    # 3. act: the dead letter of that compensation, its traceback; fix the cause, redrive
    assert dl_id in run(command("FAILED", "sagas dlq list --saga <saga id>"), saga_id=saga_id)
    shown = run(command("FAILED", "sagas dlq show <dead letter id>"), dead_letter_id=dl_id)
    assert "Traceback" in shown and "reserve is switched off" in shown
    fix(redis_client, saga_id, "reserve")
    run(command("FAILED", "sagas dlq redrive <dead letter id>"), dead_letter_id=dl_id)
    assert get_runtime().store.dead_letter(dl_id).status == "REDRIVEN"
    assert wait_for(saga_id, timeout=30).state == "COMPENSATED"
    assert "COMPENSATED" in run(command("FAILED", "sagas status <saga id>"), saga_id=saga_id)
    # 4. check
    check(saga_id, "COMPENSATED")
    assert acted(saga_id, "inventory API back")


def test_failed_redriven_over_http(redis_client: Any, api: str) -> None:
    saga_id, dl_id = failed(redis_client)

    letters = json.loads(run(command("FAILED", "curl -s $API/api/dead-letters?saga_id=<saga id>"), api,
                             saga_id=saga_id))
    assert [d["id"] for d in letters] == [dl_id]
    fix(redis_client, saga_id, "reserve")
    redriven = json.loads(run(command("FAILED", "curl -s -X POST $API/api/dead-letters/<dead letter id>/redrive"),
                              api, dead_letter_id=dl_id))

    assert redriven["status"] == "REDRIVEN"
    check(saga_id, "COMPENSATED")
    assert [d["who"] for d in acted(saga_id, "inventory API back")] == ["alice"]


def test_failed_undone_by_hand_discarded_then_resumed(redis_client: Any) -> None:
    saga_id, dl_id = failed(redis_client)

    run(command("FAILED", "sagas dlq discard <dead letter id>"), dead_letter_id=dl_id)
    assert get_runtime().store.dead_letter(dl_id).status == "DISCARDED"
    assert get_saga(saga_id).state == "FAILED"  # its record says a compensation did not run
    fix(redis_client, saga_id, "reserve")  # the service finds nothing left to undo
    run(command("FAILED", "sagas resume <saga id>"), saga_id=saga_id)

    check(saga_id, "COMPENSATED")
    assert get_saga(saga_id).step("reserve").status == "COMPENSATED"


def test_failed_on_the_same_step_redriven_all_at_once(redis_client: Any) -> None:
    (first, first_dl), (second, second_dl) = failed(redis_client), failed(redis_client)
    for saga_id in (first, second):
        fix(redis_client, saga_id, "reserve")

    out = run(command("FAILED", "sagas dlq redrive --type <saga type>"), saga_type="runbook.order", step="reserve")

    assert "redriven" in out and "refused" not in out
    assert {get_runtime().store.dead_letter(d).status for d in (first_dl, second_dl)} == {"REDRIVEN"}
    for saga_id in (first, second):
        check(saga_id, "COMPENSATED")


# ------------------------------------------------------------------ COMPENSATING for long


def test_compensating_for_long_retried_now_from_the_command_line(redis_client: Any) -> None:
    saga_id = compensating(redis_client)

    assert saga_id in run(command("Find it", "sagas list --state COMPENSATING"))
    assert "COMPENSATING" in run(command("Read its timeline", "sagas status <saga id> #"), saga_id=saga_id)
    whole = timeline(saga_id)  # its attempts, the history's CompensationAttemptFailed with each error
    assert whole["state"] == "COMPENSATING" and step_of(whole, "charge")["compensation_attempts"] == 1
    assert [e["detail"]["error"] for e in whole["events"] if e["type"] == "CompensationAttemptFailed"] == [
        "Transient: charge is switched off"]
    fix(redis_client, saga_id, "charge")
    run(command("COMPENSATING", "sagas retry <saga id>"), saga_id=saga_id)

    check(saga_id, "COMPENSATED")  # now, not in ten minutes
    assert acted(saga_id, "refund API back")


def test_compensating_for_long_retried_now_over_http(redis_client: Any, api: str) -> None:
    saga_id = compensating(redis_client)

    fix(redis_client, saga_id, "charge")
    run(command("COMPENSATING", "curl -s -X POST $API/api/sagas/<saga id>/retry"), api, saga_id=saga_id)

    check(saga_id, "COMPENSATED")
    assert acted(saga_id, "refund API back")


# ------------------------------------------------------------------ RUNNING, and nothing moves


def test_running_with_no_worker_on_its_queue_is_found_and_swept(runbook_worker: WorkerProcess) -> None:
    saga_id = start_saga("runbook.orphaned", {}, saga_id=new_id("orphaned"))
    wait_until(lambda: get_saga(saga_id).step("lost").status == "RUNNING", 30, "the lost step dispatched")

    # 1. is a worker consuming its queue? The workers answer; none consumes runbook_nobody
    assert runbook_worker.name in run(command("RUNNING", "celery -A <your app> status"))
    queues = run(command("RUNNING", "celery -A <your app> inspect active_queues"))
    assert "'runbook'" in queues and "runbook_nobody" not in queues
    # 3. beat would sweep it once the step's deadline passed: one sweep by hand
    deadline = get_saga(saga_id).step("lost").deadline_at
    wait_until(lambda: datetime.now(timezone.utc) > deadline, 30, "the lost step's deadline")
    swept = run(command("RUNNING", "sagas sweep"))

    assert f"{saga_id}:lost" in swept
    check(saga_id, "COMPENSATED")
    view = get_saga(saga_id)  # timed out, then compensated with the rest (it may have happened)
    assert "StepTimedOut" in view.event_types() and view.step("lost").status == "COMPENSATED"


def test_running_with_no_worker_on_its_queue_goes_on_once_a_worker_consumes_it() -> None:
    saga_id = start_saga("runbook.orphaned", {}, saga_id=new_id("orphaned"))
    wait_until(lambda: get_saga(saga_id).step("lost").status == "RUNNING", 30, "the lost step dispatched")

    log = Path(f"/tmp/saga-test-runbook-queue-worker-{os.getpid()}.log")
    worker = start(command("RUNNING", "celery -A <your app> worker -Q <its queue>"), log, its_queue="runbook_nobody")
    try:
        view = wait_for(saga_id, timeout=60)
    finally:
        stop_process_group(worker)

    assert view.state == "COMPLETED", log.read_text()[-2000:]
    assert view.step("lost").attempts == 1  # the message that waited in the broker, taken once
    check(saga_id, "COMPLETED")


def test_running_and_retrying_is_found_and_retried_now(redis_client: Any) -> None:
    saga_id = retrying(redis_client)

    assert saga_id in run(command("Find it", "sagas list --state RUNNING"), saga_type="runbook.order")
    assert "RUNNING" in run(command("Read its timeline", "sagas status <saga id> #"), saga_id=saga_id)
    whole = timeline(saga_id)  # 2. is it retrying? StepAttemptFailed in the history, the next try far away
    assert step_of(whole, "ship")["status"] == "RUNNING"
    assert [e["detail"]["retry_in"] for e in whole["events"] if e["type"] == "StepAttemptFailed"] == [600]
    fix(redis_client, saga_id, "ship")
    run(command("RUNNING", "sagas retry <saga id>"), saga_id=saga_id)

    check(saga_id, "COMPLETED")
    assert get_saga(saga_id).step("ship").attempts == 2


def test_running_on_a_version_no_worker_holds_is_moved(runbook_worker: WorkerProcess) -> None:
    saga_id = unheld()

    run(command("RUNNING", "sagas versions"))
    held = {v.saga_version: v for v in version_report(get_runtime()) if v.saga_type == VERSIONED}
    assert held[1].active == 1 and held[1].workers == []  # runs in flight, no live worker
    assert runbook_worker.name in " ".join(held[2].workers)
    run(command("RUNNING", "sagas move <saga id>"), saga_id=saga_id)

    check(saga_id, "COMPLETED")
    assert get_saga(saga_id).saga_version == 2


def test_running_given_up_is_cancelled_from_the_command_line_or_over_http(redis_client: Any, api: str) -> None:
    by_cli, by_http = retrying(redis_client), retrying(redis_client)

    run(command("RUNNING", "sagas cancel <saga id>"), saga_id=by_cli)
    answer = json.loads(run(command("RUNNING", "POST /api/sagas/<saga id>/cancel"), api, saga_id=by_http))

    assert answer["state"] in ("COMPENSATING", "COMPENSATED")
    for saga_id in (by_cli, by_http):
        check(saga_id, "COMPENSATED")
        assert [get_saga(saga_id).step(s).status for s in ("reserve", "charge")] == ["COMPENSATED", "COMPENSATED"]
    assert acted(by_cli, "customer asked") and acted(by_http, "runbook test")


# ------------------------------------------------------------------ WAITING


def test_waiting_is_found_then_signalled_or_cancelled() -> None:
    signalled, cancelled = waiting(), waiting()

    listed = run(command("Find it", "sagas list --state WAITING"))
    assert signalled in listed and cancelled in listed
    shown = run(command("Read its timeline", "sagas status <saga id> #"), saga_id=signalled)
    assert "WAITING" in shown and "approval" in shown  # it names the signal ...
    wait = step_of(timeline(signalled), "sign_off")
    assert wait["status"] == "WAITING" and wait["deadline_at"]  # ... and the deadline
    run(command("WAITING", "sagas signal <saga id> approval"), saga_id=signalled)
    run(command("WAITING", "sagas cancel <saga id>"), saga_id=cancelled)

    check(signalled, "COMPLETED")
    check(cancelled, "COMPENSATED")
    assert get_saga(cancelled).step("reserve").status == "COMPENSATED"


# ------------------------------------------------------------------ a dead letter with no saga to move


def test_an_action_dead_letter_is_read_and_discarded() -> None:
    view = wait_for(start_saga("runbook.order", {"behaviour": {"reserve": {"fail_times": 99}}},
                               saga_id=new_id("action")), timeout=30)
    assert view.state == "COMPENSATED"  # the run compensated by itself
    [dl] = get_runtime().store.dead_letters(saga_id=view.id)
    assert dl.kind == "action"
    with pytest.raises(InvalidOperation):
        redrive(dl.id)  # nothing to redrive

    assert "reserve flaked" in run(command("FAILED", "sagas dlq show <dead letter id>"), dead_letter_id=dl.id)
    run(command("no saga to move", "sagas dlq discard <dead letter id>"), dead_letter_id=dl.id)

    assert get_runtime().store.dead_letter(dl.id).status == "DISCARDED"
    check(view.id, "COMPENSATED")


def test_a_message_dead_letter_is_read_and_discarded(redis_client: Any) -> None:
    raw = f"not json {{{{{uuid.uuid4().hex}"
    redis_client.lpush("runbook", raw.encode())  # a producer that does not speak the protocol

    def kept() -> list[Any]:
        return [d for d in get_runtime().store.dead_letters(limit=1000) if d.kwargs.get("raw") == raw]

    [dl] = wait_until(kept, 30, "the message dead-lettered")
    assert (dl.kind, dl.saga_id) == ("message", None)
    with pytest.raises(InvalidOperation):
        redrive(dl.id)  # nothing to redrive

    assert "not JSON" in run(command("FAILED", "sagas dlq show <dead letter id>"), dead_letter_id=dl.id)
    run(command("no saga to move", "sagas dlq discard <dead letter id>"), dead_letter_id=dl.id)

    assert get_runtime().store.dead_letter(dl.id).status == "DISCARDED"


# ------------------------------------------------------------------ every command on the page


STUCK_BY_SECTION = {
    "Find it": "failed", "Read its timeline": "failed", "FAILED": "failed", "no saga to move": "failed",
    "Check": "failed", "COMPENSATING": "compensating", "RUNNING": "unheld", "WAITING": "waiting",
}


def answers(app: Any, cmd: Command, **values: str) -> None:
    """Start the page's worker command and wait until a new worker answers a ping; then stop it."""
    before = {node for reply in app.control.ping(timeout=1) for node in reply}
    log = Path(f"/tmp/saga-test-runbook-server-{os.getpid()}.log")
    proc = start(cmd, log, **values)
    try:
        wait_until(lambda: {n for r in app.control.ping(timeout=0.5) for n in r} - before, 60,
                   f"{cmd} answering")
    finally:
        stop_process_group(proc)


def test_every_command_on_the_page_runs(redis_client: Any, api: str, app: Any) -> None:
    """Last: a command of the page no test above ran (one added since) runs here on a fresh stuck
    saga of its section, and must work; the illustrative ones are the whitelisted ones only."""
    assert COMMANDS, f"no command found in {PAGE}"
    assert set(ILLUSTRATIVE) <= {c.text for c in COMMANDS}, "a whitelisted command is no longer on the page"
    for cmd in [c for c in COMMANDS if c not in RAN and c.text not in ILLUSTRATIVE]:
        kind = next((k for s, k in STUCK_BY_SECTION.items() if s in cmd.section), None)
        assert kind is not None, f"{cmd}: no stuck saga is made for its section: add a scenario to this module"
        values: dict[str, str] = {"saga_type": "runbook.order", "step": "reserve"}
        if kind == "failed":
            values["saga_id"], values["dead_letter_id"] = failed(redis_client)
        else:
            values["saga_id"] = {"compensating": lambda: compensating(redis_client), "unheld": unheld,
                                 "waiting": waiting}[kind]()
        values["its_queue"] = "runbook_nobody"
        if is_server(substitute(cmd, {k.replace("_", " "): v for k, v in values.items()})):
            answers(app, cmd, **values)
        else:
            run(cmd, api, **values)
    assert {c for c in COMMANDS if c.text not in ILLUSTRATIVE} <= RAN
    for named in ("sagas dlq show", "sagas status"):  # a command named in prose ran in its runnable form
        assert any(c.text.startswith(f"{named} <") for c in RAN), named
