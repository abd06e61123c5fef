"""`sagas dlq list|show|redrive|discard`: the dead-letter queue."""
from __future__ import annotations

import sys

import click
from rich.table import Table
from rich.text import Text

from workflows.interfaces.cli.output import console, echo_json, runtime, short, styled, time


@click.group()
def dlq() -> None:
    """The dead-letter queue: tasks whose retries ran out."""


@dlq.command("list")
@click.option("--status", default="OPEN", show_default=True,
              type=click.Choice(["OPEN", "REDRIVEN", "DISCARDED", "ALL"], case_sensitive=False))
@click.option("--saga", "saga_id", help="Only the dead letters of this saga.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_list(status: str, saga_id: str | None, limit: int, as_json: bool) -> None:
    """Dead letters, newest first."""
    from workflows.operations.dead_letters import list_dead_letters

    runtime()
    status = status.upper()
    items = list_dead_letters(None if status == "ALL" else status, saga_id=saga_id, limit=limit)
    if as_json:
        echo_json([d.to_dict() for d in items])
        return
    table = Table(title=f"{len(items)} dead letter(s)", title_justify="left")
    for col in ("id", "saga", "step", "kind", "status", "attempts", "exception", "created"):
        table.add_column(col, no_wrap=col in ("id", "saga", "created"))
    for d in items:
        table.add_row(d.id, d.saga_id or "", d.step or "", d.kind, styled(d.status), str(d.attempts),
                      short(d.exception, 60), time(d.created_at))
    console().print(table)


@dlq.command("show")
@click.argument("dl_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(dl_id: str, as_json: bool) -> None:
    """One dead letter with its message and traceback."""
    from workflows.operations.dead_letters import get_dead_letter

    runtime()
    d = get_dead_letter(dl_id)
    if as_json:
        echo_json(d.to_dict())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in (("id", d.id), ("saga", d.saga_id), ("step", d.step), ("kind", d.kind),
                         ("task", d.task_name), ("queue", d.queue), ("status", d.status),
                         ("resolution", d.resolution), ("attempts", d.attempts), ("exception", d.exception),
                         ("created", time(d.created_at)), ("resolved", time(d.resolved_at)),
                         ("args", short(d.args, 120)), ("kwargs", short(d.kwargs, 120))):
        table.add_row(label, styled(d.status) if label == "status" else Text(str(value or "")))
    out = console()
    out.print(table)
    if d.traceback:
        out.print(Text(d.traceback.rstrip(), style="dim"))


@dlq.command("redrive")
@click.argument("dl_id", required=False)
@click.option("--reason", default="", help="Why, for the history.")
@click.option("--type", "saga_type", help="With --step and --all: every OPEN dead letter of this saga type ...")
@click.option("--step", help="... and this step.")
@click.option("--all", "every", is_flag=True, help="Redrive every OPEN dead letter of --type and --step.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --all).")
@click.pass_obj
def dlq_redrive(obj: dict[str, str], dl_id: str | None, reason: str, saga_type: str | None, step: str | None,
                every: bool, as_json: bool) -> None:
    """Publish the dead letter's work again, once; or, with --type T --step S --all, every OPEN dead
    letter of step S of the sagas of type T (each one its own redrive; exit 1 if any was refused)."""
    from workflows.operations.dead_letters import redrive, redrive_all

    if dl_id is not None and (saga_type or step or every):
        raise click.UsageError("give a dead letter id, or --type, --step and --all; not both")
    if dl_id is None:
        if not (saga_type and step and every):
            raise click.UsageError("give a dead letter id, or all of --type T --step S --all")
        runtime()
        done = redrive_all(saga_type, step, who=obj["who"], reason=reason)
        if as_json:
            echo_json({"saga_type": done.saga_type, "step": done.step, "redriven": done.redriven,
                       "refused": done.refused})
        else:
            click.echo(f"{len(done.redriven)} dead letter(s) of {saga_type}/{step} redriven"
                       + (f", {len(done.refused)} refused" if done.refused else ""))
            for dl, why in done.refused.items():
                click.echo(f"refused {dl}: {why}", err=True)
        if done.refused:
            sys.exit(1)
        return
    runtime()
    d = redrive(dl_id, who=obj["who"], reason=reason)
    click.echo(f"dead letter {d.id} {d.status.lower()}: {d.resolution or ''}".rstrip(": "))


@dlq.command("discard")
@click.argument("dl_id")
@click.option("--reason", required=True, help="Why it needs no redrive.")
@click.pass_obj
def dlq_discard(obj: dict[str, str], dl_id: str, reason: str) -> None:
    """Close a dead letter without redriving it."""
    from workflows.operations.dead_letters import discard

    runtime()
    d = discard(dl_id, who=obj["who"], reason=reason)
    click.echo(f"dead letter {d.id} {d.status.lower()}: {d.resolution or ''}".rstrip(": "))
