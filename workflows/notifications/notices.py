"""What needs a person, as data: the notices a committed transition or an idle run gives. Pure.

Four kinds, each with its dedup key (the key a receiver, and the store, drops a repeat by):

    failed       the run became FAILED (a compensation ran out of retries)   failed:<saga id>:<run version>
    dead_letter  a dead letter was opened (a step ran out of retries...)     dead_letter:<saga id>:<dead letter id>
    lost_worker  the sweeper timed out a step no worker reported on          lost_worker:<saga id>:<run version>
    no_progress  a RUNNING or COMPENSATING run unchanged past its bound       no_progress:<saga id>:<run version>

The first three come from a transition (`transition_notices`, the `notify` projection's derive: written
pending in the transition's own atomic write); the last from the sweeper (`no_progress_notice`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from workflows.core.run import RunState, RunStatus
from workflows.core.transition import Transition

SCHEMA = "saga-notification/1"
FAILED, DEAD_LETTER, LOST_WORKER, NO_PROGRESS = "failed", "dead_letter", "lost_worker", "no_progress"
KINDS = (FAILED, DEAD_LETTER, LOST_WORKER, NO_PROGRESS)
WORKER_LOST_REASON = "no result before the step's deadline (message lost or worker gone)"
"""The reason the sweeper times a step out with when its deadline passed with no report: what a
`lost_worker` notice is recognised by (`StepTimedOut` events with it)."""


def notice(kind: str, run: RunState, now: datetime, *, reason: str, key: str | int | None = None,
           step: str | None = None, link: str = "", **extra: Any) -> dict[str, Any]:
    """The webhook's body of one notice (also what the store keeps). `key`: the run version, or the
    dead letter id, that makes the dedup key unique."""
    nid = f"{kind}:{run.saga_id}:{run.version if key is None else key}"
    return {"schema": SCHEMA, "id": nid, "kind": kind, "saga_id": run.saga_id, "saga_type": run.saga_type,
            "saga_version": run.saga_version, "run_version": run.version, "state": run.status.value,
            "step": step, "reason": reason, "time": now.isoformat(),
            "link": f"{link.rstrip('/')}/sagas/{run.saga_id}" if link else f"/console/sagas/{run.saga_id}", **extra}


def transition_notices(t: Transition, now: datetime, link: str = "") -> list[dict[str, Any]]:
    """The notices `t` gives (none for almost every transition): its run became FAILED, it opened
    dead letters, the sweeper timed a step out for want of any report. A child run it starts
    gives none (it has just begun)."""
    run, out = t.after, []
    if run.status == RunStatus.FAILED and t.before.status != RunStatus.FAILED:
        out.append(notice(FAILED, run, now, link=link,
                          reason=run.failure_reason or "a compensation ran out of retries"))
    for d in t.dead_letters:
        out.append(notice(DEAD_LETTER, run, now, key=d.id, step=d.step, link=link, dead_letter_id=d.id,
                          reason=f"{d.kind} {d.task} gave up after {d.attempts} attempt(s): "
                                 f"{d.error.type}: {d.error.message}"))
    for e in t.events:
        if e.type == "StepTimedOut" and e.detail.get("reason") == WORKER_LOST_REASON:
            out.append(notice(LOST_WORKER, run, now, step=e.step, link=link,
                              reason=f"step {e.step!r}: {WORKER_LOST_REASON}"))
    return out


def no_progress_notice(run: RunState, now: datetime, *, idle_since: datetime, bound: float,
                       link: str = "") -> dict[str, Any]:
    """The notice of a run unchanged since `idle_since`, longer than its `bound` (seconds)."""
    idle = (now - idle_since).total_seconds()
    return notice(NO_PROGRESS, run, now, link=link, idle_seconds=round(idle, 3), bound_seconds=bound,
                  reason=f"no progress for {idle:.0f}s (the bound is {bound:g}s) while {run.status.value}")
