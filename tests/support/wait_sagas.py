"""Sagas with waits, for the wait and signal tests (in process, and in real workers through
SAGA_EXTRA_MODULES=tests.support.sagas,tests.support.wait_sagas). Their steps run
`tests.support.sagas.behave` (each call appended to the Redis list effects:<saga id>) as tasks of
their own on the queue `waits`: a worker that does not load this module never takes their messages."""
from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from tests.support.sagas import FAST, FAST_COMP, behave
from workflows import Parallel, Saga, Step, register_saga, step_task
from workflows.core.definition import Wait


action = step_task("waits.action", queue="waits")(behave)
compensate = step_task("waits.compensate", queue="waits")(behave)


class Approval(BaseModel):
    approved: bool
    reason: str = ""


def approved(payload: dict[str, object]) -> bool:
    return bool(payload["approved"])


def _step(name: str, undo: bool = True) -> Step:
    return Step(name, action=action, compensation=compensate if undo else None, retry=FAST,
                compensation_retry=FAST_COMP, timeout=10)


approval = register_saga(Saga("tests.approval", steps=[
    _step("reserve"), _step("charge"),
    Wait("manager_approval", signal="approval", timeout=timedelta(hours=1), model=Approval, approve=approved),
    _step("ship"),
]))

fail_on_timeout = register_saga(Saga("tests.approval_or_operator", steps=[
    _step("reserve"), Wait("manager_approval", signal="approval", timeout=60, on_timeout="fail", model=Approval,
                           approve=approved),
]))

default_on_timeout = register_saga(Saga("tests.pickup_or_default", steps=[
    Wait("pickup", signal="picked_up", timeout=60, on_timeout={"picked_up": False}), _step("notify", undo=False),
]))

deadline_parked = register_saga(Saga("tests.parked_deadline", deadline=600, steps=[
    Parallel("prepare", [_step("reserve"), _step("charge")]),
    Wait("manager_approval", signal="approval", timeout=timedelta(days=30), model=Approval, approve=approved),
]))

parked_only = register_saga(Saga("tests.parked", steps=[
    Wait("confirm", signal="confirm", timeout=timedelta(days=14)), _step("done", undo=False),
]))
