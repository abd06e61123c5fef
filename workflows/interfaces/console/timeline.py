"""A saga's timeline drawn from its history rows: one row per step, bars over time, marks.

Pure: the history (`SagaView.events`) and the moment to draw up to in, a `Timeline` out (what
the template draws as SVG). Each step row gets a bar per action attempt (from its
`StepDispatched` to the report that ended it) and per compensation attempt (from
`CompensationDispatched`), a `wait` bar before an attempt that was dispatched with a countdown
(a retry's backoff), and marks for what happened at an instant: a retry, a dead letter, an
operator's redispatch or resume. Failures are `failed`; an attempt still in flight runs to `now`.

The axis is not linear over the whole run. Time when no attempt runs (a retry's backoff, a run
parked, minutes between compensation retries) that lasts longer than `BREAK_SECONDS` and a
`BREAK_SHARE` of the time attempts ran is drawn as a break of `BREAK` pixels, marked and labelled
with its length; the rest of the axis is linear over what remains, so the attempts keep their
proportions and a 50 ms step is not a 1 px sliver after minutes of retries. A bar is at least
3 px wide. The axis labels sit at the run's start, after each break and at the end, the last one
anchored at its end so that it stays inside the SVG.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workflows.core.state import Side
from workflows.core.views import EventView, SagaView

WIDTH = 960
LABEL = 200
ROW = 26
TOP = 24
RIGHT = 16
BREAK = 36
"""Pixels of an idle gap drawn as a break."""
BREAK_SECONDS = 1.0
BREAK_SHARE = 0.2
"""An idle gap is a break when longer than BREAK_SECONDS and than this share of the busy time."""
TICK_SPACING = 70

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
class Break:
    """Idle time drawn compressed."""

    start: datetime
    end: datetime
    x: float = 0.0
    w: float = 0.0
    label: str = ""


@dataclass
class Tick:
    x: float
    label: str
    anchor: str = "middle"
    """SVG text-anchor: start for the first label, end for the last, so that none is clipped."""


@dataclass
class Timeline:
    start: datetime
    end: datetime
    rows: list[Row]
    marks: list[Mark]
    ticks: list[Tick]
    breaks: list[Break] = field(default_factory=list)
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


def _busy(t: Timeline) -> list[tuple[datetime, datetime]]:
    """When some attempt ran (merged intervals of the action and compensation bars)."""
    spans = sorted((max(b.start, t.start), min(b.end, t.end)) for row in t.rows for b in row.bars
                   if b.kind != "wait")
    merged: list[tuple[datetime, datetime]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _breaks(t: Timeline) -> list[Break]:
    busy = _busy(t)
    if not busy:
        return []
    threshold = max(BREAK_SECONDS, BREAK_SHARE * sum((b - a).total_seconds() for a, b in busy))
    idle = [(t.start, busy[0][0])] + [(a[1], b[0]) for a, b in zip(busy, busy[1:])] + [(busy[-1][1], t.end)]
    return [Break(a, b) for a, b in idle if (b - a).total_seconds() > threshold]


def _layout(t: Timeline) -> None:
    plot = t.width - t.label_width - RIGHT
    t.breaks = _breaks(t)
    linear = (t.end - t.start).total_seconds() - sum((b.end - b.start).total_seconds() for b in t.breaks)
    if linear <= 0:  # nothing but idle time: a plain linear axis
        t.breaks, linear = [], (t.end - t.start).total_seconds()
    gap = min(BREAK, 0.4 * plot / len(t.breaks)) if t.breaks else 0.0
    per_second = (plot - gap * len(t.breaks)) / max(linear, 0.001)
    # the axis as pieces: (start time, start x, pixels per second), a break's own scale inside it
    pieces: list[tuple[datetime, float, float]] = []
    cursor, x0 = t.start, float(t.label_width)
    for b in t.breaks:
        pieces.append((cursor, x0, per_second))
        x0 += (b.start - cursor).total_seconds() * per_second
        b.x, b.w, b.label = round(x0, 1), round(gap, 1), _span(b.end - b.start)
        pieces.append((b.start, x0, gap / max((b.end - b.start).total_seconds(), 0.001)))
        cursor, x0 = b.end, x0 + gap
    pieces.append((cursor, x0, per_second))
    starts = [p[0] for p in pieces]

    def x(at: datetime) -> float:
        start, left, scale = pieces[max(bisect.bisect_right(starts, at) - 1, 0)]
        return round(min(left + max((at - start).total_seconds(), 0.0) * scale, t.width - RIGHT), 1)

    for i, row in enumerate(t.rows):
        row.y = TOP + i * t.row_height
        for bar in row.bars:
            bar.x = x(bar.start)
            bar.w = max(3.0, round(x(bar.end) - bar.x, 1))
        for m in row.marks:
            m.x = x(m.at)
    for m in t.marks:
        m.x = x(m.at)
    t.height = TOP + len(t.rows) * t.row_height + (22 if t.breaks else 8)
    t.ticks = _ticks(t, x)


def _ticks(t: Timeline, x: Any) -> list[Tick]:
    """Labels at the start, after each break and at the end, and evenly inside long linear stretches;
    none closer than TICK_SPACING to the one before (the end's label wins over a near or equal neighbour)."""
    stretches = list(zip([t.start, *(b.end for b in t.breaks)], [*(b.start for b in t.breaks), t.end]))
    times: list[datetime] = []
    for a, b in stretches:
        n = int((x(b) - x(a)) // (2 * TICK_SPACING))
        times += [a + (b - a) * k / (n + 1) for k in range(n + 1)]
    ticks: list[Tick] = []
    for at in times:
        if not ticks or x(at) - ticks[-1].x >= TICK_SPACING:
            ticks.append(Tick(x(at), _duration((at - t.start).total_seconds())))
    end = Tick(x(t.end), _duration((t.end - t.start).total_seconds()), "end")
    while len(ticks) > 1 and (end.x - ticks[-1].x < TICK_SPACING or ticks[-1].label == end.label):
        ticks.pop()
    ticks[0].anchor = "start"
    return ticks + [end] if end.x - ticks[0].x >= TICK_SPACING else ticks


def _span(d: timedelta) -> str:
    return _duration(d.total_seconds()).removeprefix("+")


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"+{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"+{seconds:.1f} s"
    if seconds < 7200:
        return f"+{seconds / 60:.1f} min"
    return f"+{seconds / 3600:.1f} h"
