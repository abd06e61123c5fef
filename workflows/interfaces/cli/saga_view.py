"""`sagas status` and `sagas start --wait`: one saga on the terminal, its steps, history,
signals and dead letters."""
from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from workflows.interfaces.cli.output import console, echo_json, short, styled, time


def print_saga(view: Any, as_json: bool) -> None:
    if as_json:
        echo_json(view.to_dict())
    else:
        show_saga(view)


def _redelivered(s: Any) -> Text:
    """Deliveries after a lost worker: the action's, then the compensation's ('2', '2 + 1 comp.')."""
    parts = [str(s.redeliveries)] if s.redeliveries else []
    if s.compensation_redeliveries:
        parts.append(f"{s.compensation_redeliveries} comp.")
    return Text(" + ".join(parts), style="yellow")


def show_saga(v: Any) -> None:
    out = console()
    head = Text(f"saga {v.id}  ", style="bold")
    head.append(f"{v.saga_type} v{v.saga_version}  ")
    head.append_text(styled(v.state))
    out.print(head)
    out.print(f"saga version {v.saga_version}   created {time(v.created_at)}   updated {time(v.updated_at)}   "
              f"run version {v.version}"
              + (f"   idempotency key {v.idempotency_key}" if v.idempotency_key else ""))
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

    steps = Table(title="steps", title_justify="left")
    for col in ("#", "step", "status", "attempts", "compensations", "redelivered", "started", "finished",
                "compensated", "result / error"):
        steps.add_column(col, no_wrap=col in ("started", "finished", "compensated"))
    for s in v.steps:
        detail = Text(short(s.error), style="red") if s.error else Text(short(s.result) if s.result else "")
        steps.add_row(str(s.index + 1), s.name, styled(s.status), str(s.attempts), str(s.compensation_attempts),
                      _redelivered(s), time(s.started_at), time(s.finished_at), time(s.compensated_at), detail)
    out.print(steps)

    history = Table(title="history", title_justify="left")
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
            sigs.add_row(time(x.received_at), x.name, x.who, x.idempotency_key, x.consumed_by or "(kept)",
                         short(x.payload, 60))
        out.print(sigs)

    if v.dead_letters:
        dls = Table(title="dead letters", title_justify="left")
        for col in ("id", "step", "kind", "status", "attempts", "exception"):
            dls.add_column(col, no_wrap=col == "id")
        for d in v.dead_letters:
            dls.add_row(d.id, d.step or "", d.kind, styled(d.status), str(d.attempts), short(d.exception, 60))
        out.print(dls)
