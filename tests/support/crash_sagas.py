"""A saga for the crash-safety tests, on a queue only their own workers consume ("crash").

Loaded by those workers with SAGA_EXTRA_MODULES=tests.support.sagas,tests.support.crash_sagas and
imported by the test process (which starts the runs itself, so no other worker is involved).

Every call of a step appends "<kind>:<step>:<attempt>" to the Redis list calls:<saga id> (a call is
not an effect: a redelivered message may call a step again). The *effect* of a step is idempotent
on its idempotency key, like a real service's unique constraint: `SET effect:<key> NX`, and only
the call that wins increments applied:<saga id>:<step>. Input {"sleep": {"b": 3}} makes step b
sleep after recording its call (a worker can be killed in the middle of it); {"fail": ["c"]}
makes step c's action fail for good (the steps before it are compensated). Every message a
worker starts handling, stale or not, is appended as "<kind>:<step>" to deliveries:<saga id>.
"""
from __future__ import annotations

import time
from typing import Any

from celery.signals import task_prerun

from workflows import Parallel, PermanentError, RetryPolicy, Saga, Step, StepContext, register_saga, step_task
from workflows.core.definition import Child

from .sagas import r

QUEUE = "crash"
OTHER_QUEUE = "crash-other"
"""A second queue, for a step some workers consume and others do not (inline across queues)."""


def calls(saga_id: str) -> list[str]:
    return [c.decode() for c in r().lrange(f"calls:{saga_id}", 0, -1)]


def deliveries(saga_id: str) -> list[str]:
    return [c.decode() for c in r().lrange(f"deliveries:{saga_id}", 0, -1)]


def applied(saga_id: str, step: str) -> int:
    return int(r().get(f"applied:{saga_id}:{step}") or 0)


def _effect(ctx: StepContext) -> None:
    if r().set(f"effect:{ctx.kind}:{ctx.idempotency_key}", ctx.task_id, nx=True):
        r().incr(f"applied:{ctx.saga_id}:{ctx.step}" if ctx.kind == "action" else
                 f"applied:{ctx.saga_id}:{ctx.step}:undo")


def act(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    r().rpush(f"calls:{ctx.saga_id}", f"{ctx.kind}:{ctx.step}:{ctx.attempt}")
    delay = data.get("sleep", {}).get(ctx.step) if ctx.kind == "action" else None
    if delay:
        time.sleep(delay)
    if ctx.kind == "action" and ctx.step in data.get("fail", []):
        raise PermanentError(f"{ctx.step} fails on purpose")
    _effect(ctx)
    return {"step": ctx.step}


action = step_task("crash.action", queue=QUEUE)(act)
compensate = step_task("crash.compensate", queue=QUEUE)(act)

ONCE = RetryPolicy(max_attempts=2, initial_interval=0.2, max_interval=0.5)

chain = register_saga(Saga("crash.chain", steps=[
    Step(name, action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20)
    for name in ("a", "b", "c")
]))


branches = register_saga(Saga("crash.branches", steps=[
    Step("a", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
    Parallel("pair", [Step(name, action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE,
                           timeout=20) for name in ("b1", "b2")]),
    Step("c", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
]))

slow = register_saga(Saga("crash.slow", steps=[
    Step("a", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
    Step("b", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=1),
]))
"""Step b has a time limit of 1 s: with {"sleep": {"b": 3}} it times out (inline too)."""

other_action = step_task("crash.other_action", queue=OTHER_QUEUE)(act)
other_compensate = step_task("crash.other_compensate", queue=OTHER_QUEUE)(act)

two_queues = register_saga(Saga("crash.two_queues", steps=[
    Step("a", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
    Step("b", action=other_action, compensation=other_compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
    Step("c", action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20),
]))
"""Step b on the other queue: a worker consuming both runs it inline, one consuming only "crash" publishes it."""


def _crash_step(name: str) -> Step:
    return Step(name, action=action, compensation=compensate, retry=ONCE, compensation_retry=ONCE, timeout=20)


with_child = register_saga(Saga("crash.with_child", steps=[
    _crash_step("a"),
    Child("kid", saga=Saga("crash.kid", steps=[_crash_step("k1"), _crash_step("k_last")])),
    _crash_step("c"),
]))
"""A parent whose child's last step is `k_last`: a crash right after its commit (the child
COMPLETED) must not keep the parent from finishing."""


@task_prerun.connect
def _count_delivery(sender=None, args=None, kwargs=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
    if sender is not None and sender.name.startswith("crash.") and args:
        r().rpush(f"deliveries:{args[0]}", f"{(kwargs or {}).get('kind')}:{args[1]}")
