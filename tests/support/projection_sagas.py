"""Sagas of the projection tests (tests/servers/test_projections.py, test_kafka.py, test_read_model.py):
a line of three steps, and one that waits for a signal between two steps. In process only (queue
`proj`: no real worker takes them)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from workflows import PermanentError, Saga, Step, StepContext, register_saga, step_task
from workflows.core.definition import Wait


def act(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    if data.get("fail") == ctx.step:
        raise PermanentError(f"{ctx.step} refuses")
    return {"step": ctx.step}


proj_act = step_task("proj.act", queue="proj")(act)
proj_undo = step_task("proj.undo", queue="proj")(act)

LINE = register_saga(Saga("proj.line", steps=[
    Step("a", action=proj_act, compensation=proj_undo),
    Step("b", action=proj_act, compensation=proj_undo),
    Step("c", action=proj_act, compensation=None),
]))

APPROVAL = register_saga(Saga("proj.approval", steps=[
    Step("a", action=proj_act, compensation=proj_undo),
    Wait("approval", signal="approval", timeout=timedelta(hours=1)),
    Step("b", action=proj_act, compensation=None),
]))
