"""Two versions of one saga for the rolling-deploy tests (tests/servers/test_versions_workers.py).

The step tasks are the services' code: every test worker has all of them. The saga versions are
registered by the modules a worker loads with SAGA_EXTRA_MODULES: `tests.support.versions_v1`,
`tests.support.versions_v2` (or both). Version 2 adds a fraud check and renames the compensation
(`versions.release_v1` → `versions.release_v2`). Every call appends
"<kind>:<step>:<task>:v<the run's saga version>:<worker>" to the Redis list effects:<saga id>
(the worker's name is its SAGA_TEST_WORKER). A step named in the input's "hold" fails (retryably) while the Redis key
hold:<saga id>:<step> exists; one named in "fail" fails for good.
"""
from __future__ import annotations

import os
from typing import Any

from workflows import PermanentError, RetryPolicy, Saga, Step, StepContext, step_task
from tests.support.sagas import r


class Held(Exception):
    pass


def _effect(ctx: StepContext, task: str) -> None:
    worker = os.environ.get("SAGA_TEST_WORKER", "?")
    r().rpush(f"effects:{ctx.saga_id}", f"{ctx.kind}:{ctx.step}:{task}:v{ctx.saga_version}:{worker}")


def _act(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    _effect(ctx, "versions.act")
    if ctx.step in data.get("hold", []) and r().exists(f"hold:{ctx.saga_id}:{ctx.step}"):
        raise Held(f"{ctx.step} is held")
    if ctx.step in data.get("fail", []):
        raise PermanentError(f"{ctx.step} refuses")
    return {"step": ctx.step}


def _release_v1(ctx: StepContext, data: dict[str, Any]) -> None:
    _effect(ctx, "versions.release_v1")


def _release_v2(ctx: StepContext, data: dict[str, Any]) -> None:
    _effect(ctx, "versions.release_v2")


act = step_task("versions.act", queue="versions")(_act)
release_v1 = step_task("versions.release_v1", queue="versions")(_release_v1)
release_v2 = step_task("versions.release_v2", queue="versions")(_release_v2)

NAME = "tests.versioned"
HOLDING = RetryPolicy(max_attempts=200, initial_interval=0.3, backoff=1.0, max_interval=0.3, jitter=False)


def v1() -> Saga:
    return Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=release_v1, retry=HOLDING, timeout=20),
        Step("charge", action=act, compensation=release_v1, retry=HOLDING, timeout=20),
        Step("ship", action=act, compensation=None, retry=HOLDING, timeout=20),
    ])


def v2() -> Saga:
    return Saga(NAME, version=2, steps=[
        Step("reserve", action=act, compensation=release_v2, retry=HOLDING, timeout=20),
        Step("fraud_check", action=act, compensation=None, retry=HOLDING, timeout=20),
        Step("charge", action=act, compensation=release_v2, retry=HOLDING, timeout=20),
        Step("ship", action=act, compensation=None, retry=HOLDING, timeout=20),
    ])


def v1_changed() -> Saga:
    """Version 1 with a step more and no version bump: what a forgotten bump looks like."""
    return Saga(NAME, version=1, steps=[
        Step("reserve", action=act, compensation=release_v1, retry=HOLDING, timeout=20),
        Step("fraud_check", action=act, compensation=None, retry=HOLDING, timeout=20),
        Step("charge", action=act, compensation=release_v1, retry=HOLDING, timeout=20),
        Step("ship", action=act, compensation=None, retry=HOLDING, timeout=20),
    ])
