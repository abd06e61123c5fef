"""Who may do what (issue 31): credentials with roles over HTTP and in the console, on the real
PostgreSQL store (no worker: the runs these tests act on stay where they are).

Given a viewer, an operator, a service and an admin, each with a token made by `sagas
credentials create`, then each may do what its role grants and is refused (403) the rest, the
refusal recorded with its authenticated name in the access audit and the run's history; a revoked
or expired token is 401; the history's operator is the credential's name whatever `X-Operator`
says; a service reads and signals only the runs it started; the console's logins are counted and
locked out per name and per address (the clock moved, nothing sleeps); no token is ever logged.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from fastapi.testclient import TestClient

from workflows.testing import Clock
from tests.support.interfaces import new_id, saga_count
from workflows import get_runtime, get_saga, start_saga
from workflows.interfaces import cli
from workflows.interfaces.api import create_app
from workflows.operations import credentials as creds
from workflows.runtime.settings import get_settings

RUN = {"behaviour": {"a": {"sleep": 30}}}
"""A tests.three run that stays RUNNING (no worker takes it here)."""


def api(address: str | None = None, **settings: object) -> TestClient:
    """The API with credentials on, called from an address of its own (the login lockout counts per address)."""
    app = create_app(get_settings().model_copy(update={"api_token": None, "auth_credentials": True, **settings}))
    return TestClient(app, client=(address or new_id("addr"), 50000))


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def sagas_cli(*args: str) -> str:
    result = CliRunner().invoke(cli.main, ["--who", "root", "credentials", *args])
    assert result.exit_code == 0, result.output
    return result.output


def audit(who: str) -> list[tuple[str, str, str | None]]:
    """(action, outcome, note) of `who`'s audit rows, oldest first."""
    return [(r.action, r.outcome, r.note) for r in reversed(creds.access_store().audit_rows(who=who))]


@pytest.fixture
def people(app, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[str, str]]]:  # type: ignore[no-untyped-def]
    """{role: (name, token)}, made with `sagas credentials create`; revoked afterwards."""
    monkeypatch.setattr(cli, "_runtime", get_runtime)
    made: dict[str, tuple[str, str]] = {}
    for role in ("viewer", "operator", "service", "admin"):
        name = new_id(role)
        out = sagas_cli("create", name, "--role", role, "--expires-in", "1d")
        token = re.search(r"(sgt_\S+)", out)
        assert token, out
        made[role] = (name, token.group(1))
    yield made
    for name, _ in made.values():
        creds.access_store().revoke(name, datetime.now(timezone.utc))


def test_each_role_does_what_it_grants_and_a_refusal_is_403_recorded_with_its_name(people) -> None:  # type: ignore[no-untyped-def]
    client = api()
    viewer, operator, service, admin = (people[r] for r in ("viewer", "operator", "service", "admin"))
    saga_id = start_saga("tests.three", RUN)
    other = start_saga("tests.three", RUN)

    # the viewer reads everything
    for path in (f"/api/sagas/{saga_id}", f"/api/sagas/{saga_id}/status", "/api/sagas", "/api/dead-letters",
                 "/api/saga-versions", "/metrics"):
        assert client.get(path, headers=bearer(viewer[1])).status_code == 200, path
    # and is refused every action, each refusal on the record with its name
    before = saga_count()
    for verb, body in (("cancel", {"reason": "x"}), ("retry", {}), ("resume", {}), ("move", {"to_version": 2,
                                                                                          "reason": "x"})):
        r = client.post(f"/api/sagas/{saga_id}/{verb}", json=body, headers=bearer(viewer[1], **{"X-Operator": "eve"}))
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (verb, r.text)
        assert "'viewer' may not" in r.json()["message"]
    assert client.post("/api/sagas/tests.three", json=RUN, headers=bearer(viewer[1])).status_code == 403
    assert saga_count() == before
    assert client.post(f"/api/sagas/{saga_id}/signals/go", json={}, headers=bearer(viewer[1])).status_code == 403
    assert [(a, o) for a, o, _ in audit(viewer[0])] == [
        ("cancel", "refused"), ("retry", "refused"), ("resume", "refused"), ("move", "refused"),
        ("start", "refused"), ("signal", "refused")]
    audited = sagas_cli("audit", "--who", viewer[0], "--outcome", "refused", "--json")
    assert audited.count('"outcome": "refused"') == 6 and '"note": "eve"' in audited and viewer[1] not in audited
    assert viewer[0] in sagas_cli("list") and viewer[1] not in sagas_cli("list", "--json")
    refused = [e for e in get_saga(saga_id).events if e.type == "AccessRefused"]
    assert [(e.detail["action"], e.detail["who"], e.detail["role"]) for e in refused] == [
        (verb, viewer[0], "viewer") for verb in ("cancel", "retry", "resume", "move", "signal")]
    assert get_saga(saga_id).state == "RUNNING"

    # the operator acts; the history names the credential, X-Operator is a note in the audit
    r = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "customer asked"},
                    headers=bearer(operator[1], **{"X-Operator": "mallory"}))
    assert r.status_code == 200, r.text
    cancelled = next(e for e in get_saga(saga_id).events if e.type == "SagaCancelled")
    assert cancelled.detail["who"] == operator[0] != "mallory"
    assert ("cancel", "allowed", "mallory") in audit(operator[0])
    assert client.post("/api/sagas/tests.three", json=RUN, headers=bearer(operator[1])).status_code == 403

    # the service starts, reads and lists its own runs only
    key = new_id()
    r = client.post("/api/sagas/tests.three", json=RUN, headers=bearer(service[1], **{"Idempotency-Key": key}))
    assert r.status_code == 202, r.text
    own = r.json()["saga_id"]
    assert client.get(f"/api/sagas/{own}/status", headers=bearer(service[1])).status_code == 200
    page = client.get("/api/sagas", headers=bearer(service[1])).json()
    assert [i["id"] for i in page["items"]] == [own] and page["total"] == 1
    assert client.get(f"/api/sagas/{other}", headers=bearer(service[1])).status_code == 403
    assert client.post(f"/api/sagas/{other}/signals/go", json={}, headers=bearer(service[1])).status_code == 403
    assert client.post(f"/api/sagas/{own}/cancel", json={"reason": "x"}, headers=bearer(service[1])).status_code == 403
    assert client.get("/api/dead-letters", headers=bearer(service[1])).status_code == 403
    assert [e.detail["who"] for e in get_saga(other).events if e.type == "AccessRefused"] == [service[0]] * 2
    # an idempotent repeat of its start by another credential is the same run, and claims nothing
    again = client.post("/api/sagas/tests.three", json=RUN, headers=bearer(admin[1], **{"Idempotency-Key": key}))
    assert again.status_code == 202 and again.json()["saga_id"] == own
    assert creds.owner_of(own) == service[0]

    # the admin does everything, the service's runs included
    assert client.get(f"/api/sagas/{own}", headers=bearer(admin[1])).status_code == 200
    r = client.post(f"/api/sagas/{other}/cancel", json={"reason": "cleanup"}, headers=bearer(admin[1]))
    assert r.status_code == 200, r.text
    assert next(e for e in get_saga(other).events if e.type == "SagaCancelled").detail["who"] == admin[0]
    client.post(f"/api/sagas/{own}/cancel", json={"reason": "cleanup"}, headers=bearer(admin[1]))


def test_a_revoked_or_expired_token_is_401_and_a_missing_one_too(people, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = api()
    name, token = people["viewer"]
    assert client.get("/api/sagas", headers=bearer(token)).status_code == 200
    assert client.get("/api/sagas").status_code == 401
    assert client.get("/api/sagas", headers=bearer(token + "x")).status_code == 401

    # expired: `sagas credentials expire` in an hour, then the clock moves past it
    op_name, op_token = people["operator"]
    clock = Clock()
    clock.now = datetime.now(timezone.utc)
    monkeypatch.setattr(get_runtime(), "clock", clock)
    assert "expires" in sagas_cli("expire", op_name, "--in", "1h")
    assert client.get("/api/sagas", headers=bearer(op_token)).status_code == 200
    clock.advance(3601)
    r = client.get("/api/sagas", headers=bearer(op_token))
    assert r.status_code == 401 and "revoked or expired" in r.json()["message"]
    assert r.headers["WWW-Authenticate"] == "Bearer"

    # revoked: at once
    assert "revoked" in sagas_cli("revoke", name)
    assert client.get("/api/sagas", headers=bearer(token)).status_code == 401
    listed = sagas_cli("list", "--all", "--json")
    assert f'"name": "{name}"' in listed and token not in listed
    # the name may be given again, with a new token; the old one stays dead
    out = sagas_cli("create", name, "--role", "viewer")
    new = re.search(r"(sgt_\S+)", out)
    assert new and client.get("/api/sagas", headers=bearer(new.group(1))).status_code == 200
    assert client.get("/api/sagas", headers=bearer(token)).status_code == 401
    # credentials off (the single token only): a credential's token opens nothing
    single = api(auth_credentials=False, api_token="laptop-token")
    assert single.get("/api/sagas", headers=bearer(new.group(1))).status_code == 401
    assert single.get("/api/sagas", headers=bearer("laptop-token")).status_code == 200


def test_the_single_token_is_an_admin_named_token(app) -> None:  # type: ignore[no-untyped-def]
    client = api(auth_credentials=False, api_token="laptop-token")
    saga_id = start_saga("tests.three", RUN)
    r = client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "done"},
                    headers=bearer("laptop-token", **{"X-Operator": "dana"}))
    assert r.status_code == 200
    assert next(e for e in get_saga(saga_id).events if e.type == "SagaCancelled").detail["who"] == "token"
    assert ("cancel", "allowed", "dana") in audit("token")


def test_a_trusted_proxy_names_the_user_only_from_its_address(people) -> None:  # type: ignore[no-untyped-def]
    name, _ = people["operator"]
    viewer, _ = people["viewer"]
    trusted = api("10.0.0.7", trusted_proxies="10.0.0.7, 10.0.0.8")
    assert trusted.get("/api/sagas", headers={"X-Forwarded-User": viewer}).status_code == 200
    assert trusted.get("/api/sagas", headers={"X-Forwarded-User": "nobody-" + name}).status_code == 401
    saga_id = start_saga("tests.three", RUN)
    assert trusted.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "x"},
                        headers={"X-Forwarded-User": viewer}).status_code == 403
    assert trusted.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "x"},
                        headers={"X-Forwarded-User": name}).status_code == 200
    untrusted = api("10.0.0.9", trusted_proxies="10.0.0.7")
    assert untrusted.get("/api/sagas", headers={"X-Forwarded-User": name}).status_code == 401


# ------------------------------------------------------------------ the console


def login(client: TestClient, token: str, name: str = "") -> int:
    r = client.post("/console/login", data={"token": token, "name": name, "next": "/console/"},
                    follow_redirects=False)
    return r.status_code


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def test_console_logins_per_person_with_their_role(people) -> None:  # type: ignore[no-untyped-def]
    viewer, operator, service = people["viewer"], people["operator"], people["service"]
    saga_id = start_saga("tests.three", RUN)
    with api() as c:
        assert login(c, viewer[1], viewer[0]) == 303
        page = c.get(f"/console/sagas/{saga_id}").text
        assert f"{viewer[0]} (viewer)" in page
        form = {"csrf_token": csrf_of(page), "operator": "a note", "reason": "try", "confirm": "yes"}
        r = c.post(f"/console/sagas/{saga_id}/cancel", data=form)
        assert r.status_code == 403 and "may not cancel" in r.text
        assert [(e.detail["who"], e.detail["action"]) for e in get_saga(saga_id).events
                if e.type == "AccessRefused"] == [(viewer[0], "cancel")]
        assert ("cancel", "refused", "a note") in audit(viewer[0])
        # a form without the CSRF token is refused before anything else
        assert c.post(f"/console/sagas/{saga_id}/cancel", data={**form, "csrf_token": ""}).status_code == 403
        c.post("/console/logout", data={"csrf_token": form["csrf_token"]})
        assert c.get("/console/", follow_redirects=False).status_code == 303  # the session row is gone

    with api() as c:
        assert login(c, operator[1]) == 303  # the name is optional: the token names its credential
        page = c.get(f"/console/sagas/{saga_id}").text
        form = {"csrf_token": csrf_of(page), "operator": "on call", "reason": "stuck", "confirm": "yes"}
        assert c.post(f"/console/sagas/{saga_id}/cancel", data=form, follow_redirects=False).status_code == 303
        assert next(e for e in get_saga(saga_id).events if e.type == "SagaCancelled").detail["who"] == operator[0]
        # revoking the credential ends its session at once
        creds.revoke(operator[0], by="root")
        assert c.get("/console/", follow_redirects=False).status_code == 303

    with api() as c:  # a service has no console
        assert login(c, service[1]) == 403


def test_failed_logins_lock_out_a_name_and_an_address_until_the_window_passed(people, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name, token = people["operator"]
    clock = Clock()
    clock.now = datetime.now(timezone.utc)
    monkeypatch.setattr(get_runtime(), "clock", clock)
    settings = {"login_max_failures": 3, "login_lockout_seconds": 600}
    address = new_id("addr")
    with api(address, **settings) as c:
        for _ in range(3):
            assert login(c, "sgt_wrong", name) == 401
            clock.advance(10)
        # the right token for that name is refused now: locked out
        r = c.post("/console/login", data={"token": token, "name": name}, follow_redirects=False)
        assert r.status_code == 429 and "Too many failed logins" in r.text
        clock.advance(601)
        assert login(c, token, name) == 303
    assert [o for a, o, _ in audit(name) if a == "login"] == ["failed"] * 3 + ["locked", "succeeded"]
    # per address: three different names from the same address lock that address out
    with api(new_id("addr"), **settings) as c:
        for i in range(3):
            assert login(c, "sgt_wrong", f"nobody-{i}-{name}") == 401
        assert login(c, token) == 429
        clock.advance(601)
        assert login(c, token) == 303


def test_no_token_is_ever_logged(people, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    client = api(api_token="single-secret-token-xyz", login_max_failures=1000)
    tokens = [t for _, t in people.values()] + ["single-secret-token-xyz"]
    saga_id = start_saga("tests.three", RUN)
    for t in tokens:
        client.get(f"/api/sagas/{saga_id}", headers=bearer(t))
        client.post(f"/api/sagas/{saga_id}/retry", json={}, headers=bearer(t))
        client.get("/api/sagas", headers=bearer(t + "-wrong"))
        login(client, t)
        login(client, t + "-wrong", "someone")
    client.post(f"/api/sagas/{saga_id}/cancel", json={"reason": "end"}, headers=bearer(tokens[-1]))
    assert caplog.records, "nothing was logged: the capture does not work"
    settings = get_settings().model_copy(update={"api_token": tokens[-1]})
    assert tokens[-1] not in repr(settings) and tokens[-1] not in str(settings)  # a logged settings object
    assert "k3y" not in repr(get_settings().model_copy(update={"token_key": SecretStr("k3y")}))
    text = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for t in tokens:
        assert t not in text and t[4:] not in text


def test_the_shops_order_endpoint_takes_a_service_credential_and_records_the_run_as_its_own(
        people, order_factory) -> None:  # type: ignore[no-untyped-def]
    from tasks.shop_api import orders

    name, token = people["service"]
    client = TestClient(create_app(get_settings().model_copy(update={"api_token": None, "auth_credentials": True}),
                                   routers=[orders]))
    order = order_factory()
    assert client.post("/api/orders", json=order, headers=bearer(people["viewer"][1])).status_code == 403
    r = client.post("/api/orders", json=order, headers=bearer(token, **{"Idempotency-Key": order["order_id"]}))
    assert r.status_code == 202, r.text
    saga_id = r.json()["saga_id"]
    assert creds.owner_of(saga_id) == name
    assert client.get(f"/api/sagas/{saga_id}/status", headers=bearer(token)).status_code == 200


def test_the_credential_commands_refuse_bad_input_naming_the_problem(people) -> None:  # type: ignore[no-untyped-def]
    name, _ = people["viewer"]
    taken = CliRunner().invoke(cli.main, ["credentials", "create", name, "--role", "viewer"])
    assert taken.exit_code == 1 and "an active credential named" in taken.output and "revoke it first" in taken.output
    role = CliRunner().invoke(cli.main, ["credentials", "create", "x-" + name, "--role", "root"])
    assert role.exit_code == 2 and "'root' is not one of" in role.output
    when = CliRunner().invoke(cli.main, ["credentials", "create", "x-" + name, "--role", "viewer",
                                         "--expires-in", "soon"])
    assert when.exit_code == 2 and "not a duration" in when.output
    unknown = CliRunner().invoke(cli.main, ["credentials", "revoke", "nobody-" + name])
    assert unknown.exit_code == 1 and "no active credential named" in unknown.output
    assert creds.access_store().active_by_name("x-" + name) is None  # nothing half-made
