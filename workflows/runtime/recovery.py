"""Own-commit recovery: a step message whose transition already committed publishes again only
what may be missing.

A message redelivered after its transition committed finds the run one version ahead and made
by itself (`caused_by`). The copy that committed publishes before it is acked, so only a
redelivery (that copy died) or a retry of the same message (its publish failed) can owe the
follow-up; a fresh duplicate leaves it to the copy that committed, and duplicates do not
multiply along the saga. What is owed is derived from the state (`DecisionLoop.republish`), each
message checked against its own step's dispatch when it arrives, so a duplicate is harmless.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from workflows.core.definition import Saga
from workflows.core.state import STARTED_BY, ChildFinished, Command, HistoryEvent, Order, RunState
from workflows.runtime.loop_port import LoopPort
from workflows.runtime.redelivery import lost_inline
from workflows.runtime.step_report import Delivery

log = logging.getLogger("workflows.orchestration")


def found_own_commit(loop: LoopPort, saga: Saga, run: RunState, delivery: Delivery, step: str | None,
                     inline_queues: frozenset[str] | None = None) -> None:
    """This message's transition already committed: re-publish the follow-up only if it may be
    missing. `inline_queues`: steps run inline on these queues (a follow-up there counts a lost worker)."""
    now = loop.clock()
    if not (delivery.redelivered or delivery.retries > 0):
        log.warning("duplicate of %s for step %s ignored", delivery.task_id, step, extra={"saga_id": run.saga_id})
        loop.store.record(run.saga_id, HistoryEvent("DuplicateIgnored", step, None, {"run_version": run.version}),
                          by=delivery.task_id, now=now)
        return
    # Only what this message's own transition dispatched (its history says so): the other
    # messages in flight (a group's other branches) were published by whoever dispatched them.
    history = loop.store.history(run.saga_id)
    mine = {(e.step, e.detail.get("task_id")) for e in history
            if e.type in ("StepDispatched", "CompensationDispatched") and e.detail.get("by") == delivery.task_id}

    def owed(cmds: Sequence[Command]) -> Sequence[Command]:
        out = tuple(c for c in cmds if (c.step, c.task_id) in mine)
        if delivery.redelivered and inline_queues is not None:
            out = tuple(c for c in out if not lost_inline(loop, saga, run, c, inline_queues))
        for cmd in out:
            log.warning("re-publishing %s for step %s", cmd.task, cmd.step, extra={"saga_id": run.saga_id})
        return out

    cmds = loop.republish(saga, run, select=owed)
    _recover_children(loop, run, [e.detail["child_id"] for e in history
                                  if e.type == "ChildStarted" and e.detail.get("by") == delivery.task_id])
    loop.store.record(run.saga_id, HistoryEvent("FollowUpRepublished", step, None, {
        "run_version": run.version, "redelivered": delivery.redelivered, "retries": delivery.retries,
        "task": cmds[0].task if cmds else None, "steps": [c.step for c in cmds]}), by=delivery.task_id, now=now)


def _recover_children(loop: LoopPort, run: RunState, started: list[str]) -> None:
    """What a transition that committed and was not published owed to other runs: the first
    messages of the children it started (if nothing reported on them since), and a settled child's
    report to its parent. Duplicates are harmless: each message and report meets its step's guard."""
    for cid in started:
        child = loop.store.load(cid)
        if child.caused_by == STARTED_BY and loop.definitions.has(child.saga_type, child.saga_version):
            # its own version decides; one this worker does not hold is the sweeper's (its first step's deadline)
            loop.republish(loop.definitions.definition_of(child), child)
    if run.parent_id is not None and run.parent_step is not None and run.status.terminal:
        loop.deliver(Order(run.parent_id, ChildFinished(run.parent_step, run.saga_id, run.status, run.results(),
                                                        run.failure_reason)), by=f"saga:{run.saga_id}")
