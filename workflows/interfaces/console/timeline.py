"""A saga's timeline drawn from its history rows: one row per step, bars over time, marks.

Pure: the history (`SagaView.events`) and the moment to draw up to in, a `Timeline` out (what
the template draws as SVG). Each step row gets a bar per action attempt (from its
`StepDispatched` to the report that ended it) and per compensation attempt (from
`CompensationDispatched`), a `wait` bar before an attempt that was dispatched with a countdown
(a retry's backoff), and marks for what happened at an instant: a retry, a dead letter, an
operator's redispatch or resume. Failures are `failed`; an attempt still in flight runs to `now`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workflows.core.state import Side
from workflows.core.views import EventView, SagaView

WIDTH = 960
LABEL = 200
ROW = 26
TOP = 24

_ACTION_END = {"StepSucceeded": "ok", "StepAttemptFailed": "failed", "StepFailed": "failed", "StepTimedOut": "failed"}
_COMP_END = {"StepCompensated": "ok", "CompensationAttemptFailed": "failed", "CompensationFailed": "failed"}
_STEP_MARKS = {"StepAttemptFailed": "retry", "CompensationAttemptFailed": "retry", "DeadLettered": "dead-letter",
               "StepRedispatched": "operator", "StepRetriedByOperator": "operator", "CompensationResumed": "operator",
               "StaleMessageIgnored": "ignored", "DuplicateIgnored": "ignored"}
_RUN_MARKS = {"SagaStarted": "start", "CompensationStarted": "compensating", "SagaCancelled": "operator",
              "SagaCompleted": "end-ok", "SagaCompensated": "end-compensated", "SagaFailed": "end-failed"}


@dataclass
class Bar:
    kind: str
    """action, compensation or wait"""
    status: str
    """ok, failed, running (still in flight), superseded (dispatched again while in flight) or waiting"""
    start: datetime
    end: datetime
    attempt: int | None
    title: str
    task_id: str | None = None
    x: float = 0.0
    w: float = 0.0


@dataclass
class Mark:
    kind: str
    at: datetime
    title: str
    x: float = 0.0


@dataclass
class Row:
    step: str
    stage: str
    bars: list[Bar] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    y: float = 0.0


@dataclass
class Timeline:
    start: datetime
    end: datetime
    rows: list[Row]
    marks: list[Mark]
    ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = 0
    label_width: int = LABEL
    row_height: int = ROW


def _detail(e: EventView, key: str) -> Any:
    return e.detail.get(key) if isinstance(e.detail, dict) else None


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def build(view: SagaView, now: datetime, stages: dict[str, str] | None = None) -> Timeline:
    """The timeline of `view` up to `now` (only used for what is still in flight, when not terminal)."""
    stages = stages or {}
    rows = {s.name: Row(s.name, stages.get(s.name, "")) for s in view.steps}
    run_marks: list[Mark] = []
    open_: dict[tuple[str, str], Bar] = {}
    events = sorted(view.events, key=lambda e: (e.at, e.id))
    for e in events:
        if e.type in _RUN_MARKS:
            reason = _detail(e, "reason")
            run_marks.append(Mark(_RUN_MARKS[e.type], e.at, e.type + (f": {reason}" if reason else "")))
        if e.step is None or e.step not in rows:
            continue
        row = rows[e.step]
        if e.type in ("StepDispatched", "CompensationDispatched"):
            kind = Side.ACTION if e.type == "StepDispatched" else Side.COMPENSATION
            if (e.step, kind) in open_:
                # dispatched again while in flight (an operator's retry, a redispatch): the old message is stale
                prior = open_.pop((e.step, kind))
                prior.end, prior.status = e.at, "superseded"
            eta = _parse(_detail(e, "eta"))
            begin = e.at
            if eta is not None and eta > e.at:
                row.bars.append(Bar("wait", "waiting", e.at, eta, e.attempt,
                                    f"{e.step}: {kind} attempt {e.attempt} waits until {eta.isoformat()}"))
                begin = eta
            attempt = Bar(kind, "running", begin, begin, e.attempt, f"{e.step}: {kind} attempt {e.attempt}",
                          task_id=_detail(e, "task_id"))
            row.bars.append(attempt)
            open_[(e.step, kind)] = attempt
        elif e.type in _ACTION_END or e.type in _COMP_END:
            kind = Side.ACTION if e.type in _ACTION_END else Side.COMPENSATION
            status = (_ACTION_END if kind is Side.ACTION else _COMP_END)[e.type]
            if (e.step, kind) in open_:
                bar = open_.pop((e.step, kind))
            else:  # a cancel times out a step at once, with no attempt open in the history
                bar = Bar(kind, status, e.at, e.at, e.attempt, f"{e.step}: {kind}")
                row.bars.append(bar)
            bar.end, bar.status = max(e.at, bar.start), status
            error = _detail(e, "error") or _detail(e, "reason")
            bar.title = f"{bar.title}: {e.type}" + (f" ({error})" if error and status == "failed" else "")
        if e.type in _STEP_MARKS:
            what = _detail(e, "error") or _detail(e, "reason") or ""
            row.marks.append(Mark(_STEP_MARKS[e.type], e.at, f"{e.type} {e.step}" + (f": {what}" if what else "")))
    start = events[0].at if events else view.created_at
    last = events[-1].at if events else view.updated_at
    end = max(last, now) if not view.terminal else last
    for bar in open_.values():  # still in flight
        bar.end = max(bar.start, end)
    timeline = Timeline(start, end, list(rows.values()), run_marks, [])
    _layout(timeline)
    return timeline


def _layout(t: Timeline) -> None:
    span = max((t.end - t.start).total_seconds(), 0.001)
    plot = t.width - t.label_width - 16

    def x(at: datetime) -> float:
        return round(t.label_width + (at - t.start).total_seconds() / span * plot, 1)

    for i, row in enumerate(t.rows):
        row.y = TOP + i * t.row_height
        for b in row.bars:
            b.x = x(b.start)
            b.w = max(3.0, round(x(b.end) - b.x, 1))
        for m in row.marks:
            m.x = x(m.at)
    for m in t.marks:
        m.x = x(m.at)
    t.height = TOP + len(t.rows) * t.row_height + 8
    t.ticks = [(round(t.label_width + plot * i / 4, 1), _duration(span * i / 4)) for i in range(5)]


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"+{seconds:.1f} s"
    if seconds < 7200:
        return f"+{seconds / 60:.1f} min"
    return f"+{seconds / 3600:.1f} h"
