"""`sagas status` and `sagas start --wait`: one saga on the terminal, its steps, history,
signals and dead letters."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from workflows.core.outlook import Outlook, describe
from workflows.interfaces.cli.output import console, echo_json, short, since, span, styled, time


def print_saga(view: Any, as_json: bool, next_: Outlook | None = None) -> None:
    """The saga, and what comes next for it when given (`sagas status`)."""
    if as_json:
        echo_json({**view.to_dict(), "what_next": describe(next_)} if next_ is not None else view.to_dict())
        return
    show_saga(view)
    if next_ is not None and (next_.to_run or next_.compensations):
        show_next(next_)


def show_next(o: Outlook) -> None:
    """What comes next: the stages still to run, then the compensations, in the order they would run."""
    out = console()
    if o.to_run:
        out.print(Text("next: " + " → ".join(" + ".join(stage) for stage in o.to_run), style="cyan"))
    if o.compensations:
        title = "if it failed now, compensations in this order" if o.hypothetical else "compensations still to run"
        out.print(Text(title + ":", style="italic"))
        for n, c in enumerate(o.compensations, 1):
            line = Text(f"  {n}. {' + '.join(c.compensate) or '(nothing to undo)'}")
            if c.waits_for:
                line.append(f"  after {', '.join(c.waits_for)} settle", style="yellow")
            if c.stuck:
                line.append(f"  stuck: {', '.join(c.stuck)} (an operator must act)", style="red")
            out.print(line)
    elif o.hypothetical:
        out.print(Text("if it failed now: nothing to compensate", style="italic"))


def _redelivered(s: Any) -> Text:
    """Deliveries after a lost worker: the action's, then the compensation's ('2', '2 + 1 comp.')."""
    parts = [str(s.redeliveries)] if s.redeliveries else []
    if s.compensation_redeliveries:
        parts.append(f"{s.compensation_redeliveries} comp.")
    return Text(" + ".join(parts), style="yellow")


def _steps(v: Any) -> Table:
    """Full step names and states, and times relative to the run's start, so that a typical run
    fits 100 columns (the exact times are in `--json` and on the history's rows)."""
    redelivered = any(s.redeliveries or s.compensation_redeliveries for s in v.steps)
    compensated = any(s.compensated_at for s in v.steps)
    table = Table(title="steps", title_justify="left", box=None, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("step", no_wrap=True, min_width=max((len(s.name) for s in v.steps), default=4))
    table.add_column("status", no_wrap=True, min_width=max((len(s.status) for s in v.steps), default=6))
    table.add_column("attempts", no_wrap=True)
    if redelivered:
        table.add_column("redelivered", no_wrap=True)
    table.add_column("at", justify="right", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    if compensated:
        table.add_column("undone at", justify="right", no_wrap=True)
    for s in v.steps:
        tries = str(s.attempts) + (f" + {s.compensation_attempts} comp." if s.compensation_attempts else "")
        took = span((s.finished_at - s.started_at).total_seconds()) if s.started_at and s.finished_at else ""
        row: list[Any] = [str(s.index + 1), s.name, styled(s.status), tries]
        if redelivered:
            row.append(_redelivered(s))
        row += [since(s.started_at, v.created_at), took]
        if compensated:
            row.append(since(s.compensated_at, v.created_at))
        table.add_row(*row)
    return table


def _details(v: Any) -> list[Text]:
    """Each step's result or error on a line of its own, under the steps, where it has the width."""
    lines = []
    for s in v.steps:
        if s.error or s.result:
            line = Text(f"  {s.name}: ")
            line.append(short(s.error, 200), style="red") if s.error else line.append(short(s.result, 200))
            lines.append(line)
    return lines


def show_saga(v: Any) -> None:
    out = console()
    head = Text(f"saga {v.id}  ", style="bold")
    head.append(f"{v.saga_type} v{v.saga_version}  ")
    head.append_text(styled(v.state))
    if v.idempotency_key:
        head.append(f"  key {v.idempotency_key}")
    out.print(head)
    # The run's `version` is its optimistic-lock counter: one per transition, not the definition's version.
    out.print(f"saga version {v.saga_version} · created {time(v.created_at)} · last change "
              f"{since(v.updated_at, v.created_at)} · {v.version} transitions")
    if v.failure_reason:
        out.print(Text(f"reason: {v.failure_reason}", style="red"))
    if v.state == "SCHEDULED" and v.deadline_at:
        out.print(Text(f"starts at {time(v.deadline_at)}", style="cyan"))
    for s in v.steps:
        if s.status == "WAITING" and s.task_id:
            out.print(Text(f"waiting: {s.name} for signal {s.task_id.removeprefix('wait:')!r} until "
                           f"{time(s.deadline_at)}", style="blue"))
    if v.parent_id:
        out.print(f"child of saga {v.parent_id}, its step {v.parent_step!r}   (sagas status {v.parent_id})")
    for c in v.children:
        line = Text(f"child  {c.parent_step}: saga {c.id}  {c.saga_type}  ")
        line.append_text(styled(c.state))
        out.print(line)

    out.print(_steps(v))
    for line in _details(v):
        out.print(line)

    history = Table(title="history", title_justify="left", box=None, pad_edge=False)
    for col in ("+seconds", "event", "step", "attempt", "detail"):
        history.add_column(col, no_wrap=col != "detail")
    for e in v.events:
        shown = {k: val for k, val in e.detail.items() if k not in ("by", "deadline_at", "task_id") and val}
        history.add_row(f"{(e.at - v.created_at).total_seconds():8.3f}", styled(e.type) if e.type.startswith("Saga")
                        else Text(e.type), e.step or "", str(e.attempt or ""), short(shown, 90) if shown else "")
    out.print(history)

    if v.signals:
        sigs = Table(title="signals", title_justify="left")
        for col in ("received", "signal", "who", "idempotency key", "consumed by", "payload"):
            sigs.add_column(col, no_wrap=col != "payload")
        for x in v.signals:
            sigs.add_row(since(x.received_at, v.created_at), x.name, x.who, x.idempotency_key,
                         x.consumed_by or "(kept)", short(x.payload, 60))
        out.print(sigs)

    if v.dead_letters:
        out.print(Text("dead letters", style="italic"))
        for d in v.dead_letters:
            line = Text(f"  {d.id}  {d.step or ''} {d.kind}, ")
            line.append_text(styled(d.status))
            line.append(f" after {d.attempts} attempt(s): ")
            line.append(short(d.exception, 200), style="red")
            out.print(line)
