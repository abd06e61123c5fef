"""The console's pages over HTTP (the app object, real PostgreSQL; a real worker where sagas run).

Given an operator with the API token, when they log in, filter, search and act, then the pages
show what the store holds, every action needs the session's CSRF token, a reason and a
confirmation, and a request the console refuses is an HTML page naming the problem, never a 5xx.
The browser itself is in tests/servers/test_console_browser.py.
"""
from __future__ import annotations

import html
import re
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from tests.support.databases import own_pg_database
from tests.support.interfaces import failed_saga, new_id, wait_until
from tests.support.seed import delete_runs, seed_runs
from workflows import get_runtime, get_saga, start_saga
from workflows.core.views import EventView, SagaView, StepView
from workflows.interfaces.api import create_app
from workflows.interfaces.cli import main
from workflows.interfaces.console import timeline
from workflows.operations.credentials import access_store
from workflows.runtime.settings import get_settings
from workflows.store.base import SagaQuery

TOKEN = "console-token"


def console(**settings: object) -> TestClient:
    return TestClient(create_app(get_settings().model_copy(update={"api_token": TOKEN, **settings})))


@pytest.fixture
def client(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """Logged in."""
    with console(flower_url="http://flower.example:5555") as c:
        r = c.post("/console/login", data={"token": TOKEN, "next": "/console/"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        yield c


@pytest.fixture
def seed_prefix(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A prefix for seeded runs, removed after the test."""
    prefix = new_id("seed")
    yield prefix
    delete_runs(get_runtime().store, prefix)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def notes_on(target: str) -> list[str | None]:
    """The notes (the form's operator field) of the allowed actions on `target`, in the access audit."""
    return [r.note for r in reversed(access_store().audit_rows(limit=1000))
            if r.target == target and r.outcome == "allowed"]


def saga_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-saga-id="([^"]+)"', page)


# ------------------------------------------------------------------ on, off, login


def test_the_console_is_off_without_a_token_unless_opened_for_a_laptop(app):  # type: ignore[no-untyped-def]
    off = TestClient(create_app(get_settings().model_copy(update={"api_token": None, "console_open": False})))
    for path in ("/console/", "/console/login", "/console/dead-letters", "/console/static/console.js"):
        assert off.get(path).status_code == 404, path
    assert off.post("/console/login", data={"token": "x"}).status_code == 404

    laptop = TestClient(create_app(get_settings().model_copy(update={"api_token": None, "console_open": True})))
    r = laptop.get("/console/")
    assert r.status_code == 200 and "<h1>Sagas</h1>" in r.text
    assert "saga_console" in r.cookies  # a session for the CSRF token, handed out on the first page
    assert laptop.get("/console/dead-letters").status_code == 200


def test_a_page_without_a_session_goes_to_the_login_and_a_wrong_token_is_refused(app):  # type: ignore[no-untyped-def]
    c = console()
    r = c.get("/console/dead-letters?status=ALL", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Fdead-letters%3Fstatus%3DALL"
    assert c.get("/console/fragments/sagas").status_code == 401  # the script sends the browser to the login

    wrong = c.post("/console/login", data={"token": "not-it"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not the API token" in wrong.text
    assert "saga_console" not in wrong.cookies
    c.cookies.set("saga_console", "abc.def", path="/console")
    assert c.get("/console/", follow_redirects=False).status_code == 303  # a cookie that proves nothing
    c.cookies.clear()

    ok = c.post("/console/login", data={"token": TOKEN, "next": "https://evil.example/"}, follow_redirects=False)
    assert ok.headers["location"] == "/console/"  # no open redirect
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie


def test_logout_needs_the_csrf_token_and_ends_the_session(client):  # type: ignore[no-untyped-def]
    assert client.post("/console/logout", data={}).status_code == 403
    r = client.post("/console/logout", data={"csrf_token": csrf_of(client.get("/console/").text)},
                    follow_redirects=False)
    assert r.status_code == 303 and 'saga_console=""' in r.headers["set-cookie"]


# ------------------------------------------------------------------ the list


def test_the_list_filters_searches_counts_and_pages(client, seed_prefix):  # type: ignore[no-untyped-def]
    prefix = seed_prefix
    # The seeded runs live in an hour of their own, a year ahead: the shared database's other runs
    # (every module's, made in the last hour) never crowd them out of a page of 500.
    now = datetime.now(timezone.utc) + timedelta(days=365)
    ids = seed_runs(get_runtime().store, 120, prefix=prefix, now=now)  # run i is 30*(120-i) s old

    by_order = client.get(f"/console/?q={prefix}-order-7")
    assert saga_ids(by_order.text) == [ids[7]]
    assert saga_ids(client.get(f"/console/?q={prefix}-key-9").text) == [ids[9]]
    assert saga_ids(client.get(f"/console/?q={ids[11]}").text) == [ids[11]]
    assert saga_ids(client.get("/console/?q=no-such-order-anywhere").text) == []

    store = get_runtime().store
    mine = SagaQuery(created_after=now - timedelta(seconds=30 * 121), limit=500)
    page = store.search_sagas(mine)
    ours = [s for s in page.items if s.id.startswith(prefix)]
    assert len(ours) == 120
    assert [s.id for s in ours] == list(reversed(ids))  # newest first
    failed = store.search_sagas(SagaQuery(state="FAILED", created_after=mine.created_after, limit=500))
    assert {s.id for s in failed.items if s.id.startswith(prefix)} == {ids[i] for i in range(120) if i % 20 == 19}
    assert failed.by_state["FAILED"] >= 6 and failed.by_state["COMPLETED"] >= 84  # counts ignore the state filter
    with_dls = store.search_sagas(SagaQuery(open_dead_letters=True, created_after=mine.created_after, limit=500))
    assert {s.id for s in with_dls.items if s.id.startswith(prefix)} == {ids[0], ids[50], ids[100]}
    assert all(s.open_dead_letters == 1 for s in with_dls.items if s.id.startswith(prefix))
    # RUNNING/COMPENSATING seeds have create_shipment in flight, its deadline 60 s after the run's start
    stuck = store.search_sagas(SagaQuery(stuck_at=now, created_after=mine.created_after, limit=500))
    assert {s.id for s in stuck.items if s.id.startswith(prefix)} == {
        ids[i] for i in range(120) if i % 20 in (17, 18) and 30 * (120 - i) > 60}

    listed = client.get("/console/?state=FAILED&age=1h").text
    assert re.search(r'class="count-failed current" data-state="FAILED">FAILED <b>\d+</b>', listed)
    assert all(get_saga(i).state == "FAILED" for i in saga_ids(listed))
    assert "older →" in client.get("/console/").text  # 120 runs: more than one page of 50
    second = client.get("/console/?page=2").text
    assert saga_ids(second) and not set(saga_ids(second)) & set(saga_ids(client.get("/console/").text))
    fragment = client.get(f"/console/fragments/sagas?q={prefix}-order-7")
    assert fragment.status_code == 200 and saga_ids(fragment.text) == [ids[7]] and "<html" not in fragment.text


@pytest.mark.parametrize("query, message", [
    ("state=BOGUS", "the filter 'state' cannot be 'BOGUS'"),
    ("age=3y", "the filter 'age' cannot be '3y'"),
    ("page=-1", "page must be a whole number"),
    ("page=99999999999999999999", "page must be a whole number"),
    ("q=" + "x" * 300, "the filter 'q' is longer than 200 characters"),
])
def test_a_bad_filter_is_a_400_page_naming_it(client, query, message):  # type: ignore[no-untyped-def]
    r = client.get(f"/console/?{query}")
    assert r.status_code == 400 and message in html.unescape(r.text)
    assert client.get(f"/console/fragments/sagas?{query}").status_code == 400


def test_the_activity_chart_counts_the_last_hour(client, seed_prefix):  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc)
    buckets = get_runtime().store.activity(now)
    assert len(buckets) == 12 and buckets[0].start == now - timedelta(hours=1)
    before = sum(b.started for b in buckets)
    seed_runs(get_runtime().store, 40, prefix=seed_prefix, now=now)  # 40 runs in the last 20 minutes
    after = get_runtime().store.activity(now + timedelta(seconds=1))
    assert sum(b.started for b in after) == before + 40
    page = client.get("/console/").text
    assert '<polyline class="series series-started"' in page and "compensated" in page


# ------------------------------------------------------------------ one saga, actions, dead letters


@pytest.mark.usefixtures("running_worker")
def test_a_saga_page_shows_input_as_text_steps_timeline_and_flower_links(client):  # type: ignore[no-untyped-def]
    probe = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    sid = start_saga("tests.three", {"note": probe, "behaviour": {"c": {"fail": "permanent"}}})
    wait_until(lambda: get_saga(sid).state == "COMPENSATED", 30, "the saga compensated")
    page = client.get(f"/console/sagas/{sid}").text
    assert probe not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert re.search(r'data-kind="compensation" data-status="ok" data-step="a"', page)
    assert re.search(r'data-kind="action" data-status="failed" data-step="c"', page)
    task = get_saga(sid).step("a").task_id
    assert f'href="http://flower.example:5555/task/{task}"' in page
    assert 'id="signal-action"' not in page  # it waits for no signal: none offered
    view = get_saga(sid)  # the definition's version, and the run's lock counter under a label of its own
    assert f'<span id="saga-version">saga version {view.saga_version}</span>' in page
    assert f"{view.version} transitions</span>" in page and f"· version {view.version} ·" not in page
    [failed] = [e for e in get_saga(sid).events if e.type == "StepFailed"]  # a permanent error: no dead letter
    assert failed.detail["traceback"].startswith("Traceback (most recent call last)")
    assert "PermanentError: c refuses" in failed.detail["traceback"]
    row = page[page.index('<tr data-step="c">'):]
    row = row[:row.index("</tr>")]
    assert "PermanentError: c refuses" in row and '<pre class="traceback">Traceback (most recent call last)' in row


def test_an_action_without_the_csrf_token_a_reason_or_a_confirmation_is_refused(client):  # type: ignore[no-untyped-def]
    sid = start_saga("tests.three", {"behaviour": {"a": {"sleep": 3}}})
    page = client.get(f"/console/sagas/{sid}").text
    good = {"csrf_token": csrf_of(page), "operator": "olga", "reason": "customer asked", "confirm": "yes"}
    history = len(get_saga(sid).events)
    for missing, status, words in (("csrf_token", 403, "CSRF token is missing or wrong"),
                                   ("confirm", 400, "tick the confirmation box"),
                                   ("reason", 400, "give a reason")):
        form = {k: v for k, v in good.items() if k != missing}
        r = client.post(f"/console/sagas/{sid}/cancel", data=form)
        assert r.status_code == status and words in r.text, missing
    wrong = client.post(f"/console/sagas/{sid}/cancel", data={**good, "csrf_token": "0" * 64})
    assert wrong.status_code == 403
    other_session = console()
    other_session.post("/console/login", data={"token": TOKEN})
    assert other_session.post(f"/console/sagas/{sid}/cancel", data=good).status_code == 403  # tied to its session
    not_a_form = client.post(f"/console/sagas/{sid}/cancel", content=b"\xff\xfe", headers={"Content-Type": "x/y"})
    assert not_a_form.status_code in (400, 403)
    assert len(get_saga(sid).events) == history  # nothing recorded, nothing changed

    done = client.post(f"/console/sagas/{sid}/cancel", data=good, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/console/sagas/{sid}"
    assert 'name="operator" value="olga"' in client.get(f"/console/sagas/{sid}").text  # remembered for the next form
    # who acted is the session's caller (the single token's admin, "token"); the typed name is a note (issue 31)
    cancelled = [e for e in get_saga(sid).events if e.type == "SagaCancelled"]
    assert [(e.detail["who"], e.detail["reason"]) for e in cancelled] == [("token", "customer asked")]
    assert notes_on(f"saga:{sid}") == ["olga"]
    again = client.post(f"/console/sagas/{sid}/cancel", data=good)  # follows the redirect: the flash says why
    assert again.status_code == 200 and "cancel refused" in again.text


@pytest.mark.usefixtures("running_worker")
def test_a_dead_letter_is_shown_and_redriven_from_its_page(client, redis_client):  # type: ignore[no-untyped-def]
    sid = failed_saga(redis_client)
    [dl] = get_saga(sid).dead_letters
    listed = client.get(f"/console/dead-letters?type=tests.three&step=a&saga={sid}").text
    assert f'data-dead-letter="{dl.id}"' in listed
    page = client.get(f"/console/dead-letters/{dl.id}").text
    assert "is switched off" in page and "Traceback" in page
    redis_client.delete(f"switch:{sid}:a")
    r = client.post(f"/console/dead-letters/{dl.id}/redrive",
                    data={"csrf_token": csrf_of(page), "operator": "pia", "reason": "switch back on", "confirm": "yes"})
    assert r.status_code == 200 and "redriven" in r.text
    assert wait_until(lambda: get_saga(sid).state == "COMPENSATED", 30, "compensated after the redrive")
    assert get_runtime().store.dead_letter(dl.id).resolution == "redriven by token: switch back on"
    assert notes_on(f"dl:{dl.id}") == ["pia"]


@pytest.mark.usefixtures("running_worker")
def test_bulk_redrive_of_one_type_and_step_from_the_page_and_the_cli(client, redis_client):  # type: ignore[no-untyped-def]
    page_ones = [failed_saga(redis_client) for _ in range(2)]
    cli_ones = [failed_saga(redis_client) for _ in range(2)]
    for sid in page_ones + cli_ones:
        redis_client.delete(f"switch:{sid}:a")
    groups = get_runtime().store.open_dead_letter_groups()
    [group] = [g for g in groups if (g.saga_type, g.step) == ("tests.three", "a")]
    assert group.count >= 4 and group.kind == "compensation"

    page = client.get("/console/dead-letters").text
    assert 'data-group="tests.three/a"' in page
    r = client.post("/console/dead-letters/redrive-all", data={
        "csrf_token": csrf_of(page), "operator": "quinn", "reason": "refunds back", "confirm": "yes",
        "saga_type": "tests.three", "step": "a"})
    assert r.status_code == 200 and re.search(r"\d+ dead letter\(s\) of tests.three/a redriven", r.text)
    for sid in page_ones:
        assert wait_until(lambda sid=sid: get_saga(sid).state == "COMPENSATED", 30, "bulk-redriven saga compensated")

    cli_more = [failed_saga(redis_client) for _ in range(2)]
    for sid in cli_more:
        redis_client.delete(f"switch:{sid}:a")
    usage = CliRunner().invoke(main, ["dlq", "redrive", "--type", "tests.three", "--step", "a"])
    assert usage.exit_code == 2 and "--all" in usage.output
    both = CliRunner().invoke(main, ["dlq", "redrive", "some-id", "--type", "tests.three", "--step", "a", "--all"])
    assert both.exit_code == 2 and "not both" in both.output
    done = CliRunner().invoke(main, ["--who", "rita", "dlq", "redrive", "--type", "tests.three", "--step", "a",
                                     "--all", "--reason", "fixed"])
    assert done.exit_code == 0, done.output
    assert re.match(r"\d+ dead letter\(s\) of tests.three/a redriven", done.output)
    for sid in cli_more:
        assert wait_until(lambda sid=sid: get_saga(sid).state == "COMPENSATED", 30, "CLI-redriven saga compensated")
        [dl] = get_saga(sid).dead_letters
        assert dl.resolution == "redriven by rita: fixed"
    left = [g for g in get_runtime().store.open_dead_letter_groups() if (g.saga_type, g.step) == ("tests.three", "a")]
    assert left == []


# ------------------------------------------------------------------ the store's console reads, on both databases


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_console_reads_answer_alike_on_sqlite_and_postgresql(backend, tmp_path):  # type: ignore[no-untyped-def]
    from workflows.store import open_store
    from workflows.store.db import migrate

    # each backend a database of its own, exactly the seeds (the shared one holds every module's runs)
    with ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'console.db'}"
            migrate(url)
        else:
            url = stack.enter_context(own_pg_database("console"))
        _the_console_reads(open_store(url))


def _the_console_reads(store):  # type: ignore[no-untyped-def]
    from workflows.store.base import DeadLetterQuery

    prefix = new_id("reads")
    now = datetime.now(timezone.utc)
    ids = seed_runs(store, 60, prefix=prefix, now=now)
    try:
        assert [s.id for s in store.search_sagas(SagaQuery(search=f"{prefix}-order-3")).items] == [ids[3]]
        assert [s.id for s in store.search_sagas(SagaQuery(search=ids[5])).items] == [ids[5]]
        assert [s.id for s in store.search_sagas(SagaQuery(search=f"{prefix}-key-8")).items] == [ids[8]]
        assert store.search_sagas(SagaQuery(search="cust-3", search_keys=("customer_id",))).total >= 1
        recent = SagaQuery(created_after=now - timedelta(seconds=30 * 61), state="COMPENSATED", limit=100)
        page = store.search_sagas(recent)
        assert {s.id for s in page.items if s.id.startswith(prefix)} == {
            ids[i] for i in range(60) if i % 20 in (14, 15, 16)}
        dls = store.search_dead_letters(DeadLetterQuery(saga_type="order_fulfillment", step="process_payment"))
        assert {d.saga_id for d in dls.items if (d.saga_id or "").startswith(prefix)} == {ids[0], ids[50]}
        assert all(dls.saga_types[d.id] == "order_fulfillment" for d in dls.items)
        assert {d.saga_id for d in store.open_dead_letters_of("order_fulfillment", "process_payment")
                if (d.saga_id or "").startswith(prefix)} == {ids[0], ids[50]}
        assert "order_fulfillment" in store.saga_type_names()
        chart = store.activity(now + timedelta(seconds=3))  # the 60 runs started in the last 30 minutes
        assert (sum(b.started for b in chart), sum(b.completed for b in chart),
                sum(b.compensated for b in chart), sum(b.failed for b in chart)) == (60, 42, 9, 3)
    finally:
        delete_runs(store, prefix)


# ------------------------------------------------------------------ the timeline, pure


def _view(events: list[tuple[float, str, str | None, int | None, dict[str, object]]], state: str) -> SagaView:
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    evs = [EventView(i, t0 + timedelta(seconds=s), typ, step, att, detail)
           for i, (s, typ, step, att, detail) in enumerate(events)]
    steps = [StepView(i, n, "SUCCEEDED", 1, 0, None, None, None, None, None, None, None)
             for i, n in enumerate(("a", "b"))]
    return SagaView("s", "t", "orchestrated", state, 5, {}, None, None, t0, evs[-1].at, None, steps, evs, [])


def test_the_timeline_draws_attempts_waits_retries_compensations_and_failures() -> None:
    eta = datetime(2026, 12, 1, 0, 0, 3, tzinfo=timezone.utc).isoformat()
    view = _view([
        (0, "SagaStarted", None, None, {}),
        (0, "StepDispatched", "a", 1, {"task_id": "t-a"}),
        (1, "StepSucceeded", "a", 1, {}),
        (1, "StepDispatched", "b", 1, {"task_id": "t-b"}),
        (2, "StepAttemptFailed", "b", 1, {"error": "Flaky: once"}),
        (2, "StepDispatched", "b", 2, {"task_id": "t-b", "eta": eta}),
        (4, "StepFailed", "b", 2, {"error": "Flaky: twice"}),
        (4, "CompensationStarted", None, None, {"reason": "b failed"}),
        (4, "CompensationDispatched", "a", 1, {"task_id": "t-ca"}),
        (5, "StepCompensated", "a", 1, {}),
        (5, "SagaCompensated", None, None, {}),
    ], "COMPENSATED")
    t = timeline.build(view, now=view.updated_at + timedelta(hours=1))
    a, b = t.rows
    assert [(x.kind, x.status) for x in a.bars] == [("action", "ok"), ("compensation", "ok")]
    assert [(x.kind, x.status) for x in b.bars] == [("action", "failed"), ("wait", "waiting"), ("action", "failed")]
    assert [m.kind for m in b.marks] == ["retry"]
    assert t.end == view.updated_at  # terminal: drawn to its last event, not to `now`
    wait = b.bars[1]
    assert (wait.end - wait.start).total_seconds() == 1 and b.bars[2].start == wait.end
    assert a.bars[0].task_id == "t-a" and "Flaky: twice" in b.bars[2].title
    assert t.label_width <= a.bars[0].x < b.bars[0].x < a.bars[1].x <= t.width
    assert [m.kind for m in t.marks] == ["start", "compensating", "end-compensated"]


def test_a_step_in_flight_runs_to_now() -> None:
    view = _view([(0, "SagaStarted", None, None, {}), (0, "StepDispatched", "a", 1, {})], "RUNNING")
    t = timeline.build(view, now=view.updated_at + timedelta(seconds=10))
    [bar] = t.rows[0].bars
    assert bar.status == "running" and (bar.end - bar.start).total_seconds() == 10


def test_minutes_of_compensation_retries_are_drawn_as_breaks_and_the_steps_stay_readable() -> None:
    # Given a run whose steps took milliseconds, then a compensation retried for five minutes
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    events: list[tuple[float, str, str | None, int | None, dict[str, object]]] = [
        (0, "SagaStarted", None, None, {}),
        (0, "StepDispatched", "a", 1, {}), (0.05, "StepSucceeded", "a", 1, {}),
        (0.05, "StepDispatched", "b", 1, {}), (0.13, "StepFailed", "b", 1, {"error": "Declined"}),
        (0.13, "CompensationStarted", None, None, {}),
        (0.13, "CompensationDispatched", "a", 1, {}), (0.2, "CompensationAttemptFailed", "a", 1, {"error": "503"})]
    for attempt in range(2, 7):  # each retry waits a minute (its eta), then fails in 70 ms
        begin = 0.2 + (attempt - 2) * 60.07
        eta = (t0 + timedelta(seconds=begin + 60)).isoformat()
        events += [(begin, "CompensationDispatched", "a", attempt, {"eta": eta}),
                   (begin + 60.07, "CompensationAttemptFailed" if attempt < 6 else "CompensationFailed", "a",
                    attempt, {"error": "503"})]
    events.append((events[-1][0], "SagaFailed", None, None, {}))
    view = _view(events, "FAILED")

    # When it is drawn
    t = timeline.build(view, now=view.updated_at)

    # Then each minute of waiting is a marked break, and the real steps keep readable widths
    assert len(t.breaks) == 5 and all(b.w == timeline.BREAK and b.label == "60.0 s" for b in t.breaks)
    a, b = t.rows
    assert a.bars[0].w >= 40 and b.bars[0].w >= 60, (a.bars[0].w, b.bars[0].w)  # 50 ms and 80 ms of 300 s
    # in time order along the axis, every bar and label inside the SVG
    xs = [bar.x for bar in sorted(a.bars + b.bars, key=lambda bar: bar.start)]
    assert xs == sorted(xs)
    assert all(t.label_width <= bar.x and bar.x + bar.w <= t.width for row in t.rows for bar in row.bars)
    first, *_, last = t.ticks
    assert (first.anchor, first.label) == ("start", "+0 ms")
    assert last.anchor == "end" and last.x <= t.width and last.label == "+5.0 min"  # anchored at its end: not clipped
    assert all(later.x - earlier.x >= timeline.TICK_SPACING for earlier, later in zip(t.ticks, t.ticks[1:]))
    assert len({tick.label for tick in t.ticks}) == len(t.ticks)


def test_a_run_without_idle_time_is_drawn_on_a_linear_axis() -> None:
    view = _view([(0, "SagaStarted", None, None, {}), (0, "StepDispatched", "a", 1, {}),
                  (2, "StepSucceeded", "a", 1, {}), (2, "StepDispatched", "b", 1, {}),
                  (4, "StepSucceeded", "b", 1, {}), (4, "SagaCompleted", None, None, {})], "COMPLETED")
    t = timeline.build(view, now=view.updated_at)
    a, b = t.rows
    assert t.breaks == [] and a.bars[0].w == b.bars[0].w and b.bars[0].x + b.bars[0].w == t.ticks[-1].x
    assert [tick.label for tick in t.ticks][::len(t.ticks) - 1] == ["+0 ms", "+4.0 s"]


def test_a_signal_is_sent_to_a_waiting_saga_from_its_page(client):  # type: ignore[no-untyped-def]
    import tests.support.wait_sagas  # noqa: F401  (registers tests.parked in this process)

    # Given a run parked on its first stage, a wait for the signal "confirm"
    sid = start_saga("tests.parked", {})
    assert get_saga(sid).state == "WAITING"
    page = client.get(f"/console/sagas/{sid}").text
    assert 'action="/console/sagas/' in page and '<option value="confirm">confirm</option>' in page
    form = {"csrf_token": csrf_of(page), "operator": "olga", "reason": "the warehouse called", "confirm": "yes"}

    # A payload that is not JSON is refused, naming the problem, and changes nothing
    bad = client.post(f"/console/sagas/{sid}/signal", data={**form, "signal": "confirm", "payload": "{nope"})
    assert bad.status_code == 400 and "the payload is not JSON" in bad.text
    assert get_saga(sid).state == "WAITING"

    # When the operator sends it, the wait takes it: recorded with who, the reason in its payload
    sent = client.post(f"/console/sagas/{sid}/signal", data={**form, "signal": "confirm", "payload": "{}"})
    assert sent.status_code == 200 and "signal &#39;confirm&#39; sent" in sent.text
    view = get_saga(sid)
    assert view.state == "RUNNING" and view.step("confirm").status == "SUCCEEDED"
    assert view.step("confirm").result == {"reason": "the warehouse called"}
    assert [e.detail["who"] for e in view.events if e.type == "SignalReceived"] == ["token"]
    assert notes_on(f"saga:{sid}") == ["olga"]
    # and the page offers no signal once nothing waits for one any more
    assert 'action="/console/sagas/' + sid + '/signal"' not in client.get(f"/console/sagas/{sid}").text
