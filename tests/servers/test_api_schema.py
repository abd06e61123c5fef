"""The API against its own OpenAPI spec (issue 20): schemathesis generates requests from
/openapi.json, valid and invalid, drives the ASGI app in-process against the real PostgreSQL store
(and Redis, for the starts it publishes), and checks that no answer is a server error and every
answer conforms to the spec (status code, content type, body schema, headers).

Each operation and mode (valid requests, invalid ones) is its own Hypothesis test
(`operation.as_strategy(mode)`), run here in one loop: schemathesis's pytest plugin does not load
with this pytest (9).
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)
from schemathesis.generation import GenerationMode

from workflows.core.access import Role
from workflows.interfaces.api import create_app
from workflows.operations import credentials as creds
from workflows.runtime.settings import get_settings

TOKEN = "schema-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Operator": "schemathesis"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES = 40
"""Generated requests per operation and mode (about 15 operations, valid and invalid)."""


def fuzz(op, mode: GenerationMode, calls: list[int], auth: dict[str, str] = AUTH) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    """A Hypothesis test sending `op` its generated requests and checking every answer."""

    @given(case=op.as_strategy(mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:  # type: ignore[no-untyped-def]
        calls.append(1)
        case.call_and_validate(headers=auth, checks=CHECKS)

    return run  # type: ignore[no-any-return]


@pytest.fixture(params=["single token", "viewer credential"])
def caller(request, app) -> Iterator[tuple[dict[str, object], dict[str, str]]]:  # type: ignore[no-untyped-def]
    """(settings, headers): the single token (an admin), or a viewer's credential (every action a
    recorded 403: issue 31)."""
    if request.param == "single token":
        yield {"api_token": TOKEN}, AUTH
        return
    name = f"schema-viewer-{uuid.uuid4().hex[:8]}"
    _, token = creds.create(name, Role.VIEWER, by="tests", expires_at=None)
    yield {"api_token": None, "auth_credentials": True}, {"Authorization": f"Bearer {token}", "X-Operator": "fuzz"}
    creds.revoke(name, by="tests")


def test_no_request_gets_a_server_error_and_every_answer_conforms_to_the_spec(caller) -> None:  # type: ignore[no-untyped-def]
    # Given the library's API on the test database (the `app` fixture migrated it, installed the runtime)
    settings, auth = caller
    api = create_app(get_settings().model_copy(update=settings))
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14, [op.label for op in operations]

    # When schemathesis sends each operation its generated requests, valid and invalid
    failures: dict[str, str] = {}
    calls: dict[str, list[int]] = {}
    nothing_to_break: list[str] = []
    for op in operations:
        for mode in GenerationMode:
            label = f"{op.label} ({mode.value})"
            calls[label] = []
            try:
                fuzz(op, mode, calls[label], auth)()
            except Unsatisfiable:  # no invalid request exists: the operation takes no input (GET /healthz)
                assert mode == GenerationMode.NEGATIVE and not list(op.iter_parameters()), label
                nothing_to_break.append(label)
            except BaseException as e:  # noqa: B036  every operation is tried; the failures are reported together
                if isinstance(e, KeyboardInterrupt):
                    raise
                failures[label] = f"{type(e).__name__}: {e}"[:3000]

    # Then none failed, and every operation was exercised
    assert failures == {}, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
    assert all(calls[label] for label in calls if label not in nothing_to_break), {k: len(v) for k, v in calls.items()}
    assert len(nothing_to_break) <= 2, nothing_to_break


def test_a_nul_character_in_a_parameter_is_a_422_not_a_server_error(app) -> None:  # type: ignore[no-untyped-def]
    """Found by the test above: PostgreSQL's text holds no NUL, and the driver's DataError was a 500."""
    from fastapi.testclient import TestClient

    with TestClient(create_app(get_settings().model_copy(update={"api_token": TOKEN})), headers=AUTH) as client:
        for path in ("/api/dead-letters?saga_id=a%00b", "/api/sagas/a%00b", "/api/dead-letters/a%00b"):
            answer = client.get(path)
            assert answer.status_code == 422, (path, answer.status_code, answer.text)
            assert answer.json()["error"] == "invalid_request" and "cannot hold" in answer.json()["message"]
