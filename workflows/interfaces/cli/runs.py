"""`sagas start|status|list|signal`: start runs and read them."""
from __future__ import annotations

from datetime import datetime

import click
from rich.table import Table
from rich.text import Text

from workflows.core.state import RunStatus
from workflows.interfaces.cli.output import console, echo_json, load_data, runtime, styled, time
from workflows.interfaces.cli.saga_view import print_saga

RUN_STATES = tuple(s.value for s in RunStatus)


@click.command()
@click.argument("saga_type")
@click.option("--data", "raw", required=True, help="The input as JSON, @file to read a file, - for stdin.")
@click.option("--idempotency-key", help="Starting again with the same key and input starts nothing new.")
@click.option("--wait", is_flag=True, help="Wait until the saga ends, then show its timeline.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds --wait waits.")
@click.option("--countdown", type=click.FloatRange(min=0), help="Start in this many seconds (recorded SCHEDULED now).")
@click.option("--start-at", "start_at", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z"]),
              help="Start at this time, with its UTC offset (2026-12-24T09:00:00+00:00).")
@click.option("--version", "saga_version", type=click.IntRange(1), help="The saga's version (default: the newest).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def start(saga_type: str, raw: str, idempotency_key: str | None, wait: bool, timeout: float,
          countdown: float | None, start_at: datetime | None, saga_version: int | None, as_json: bool) -> None:
    """Start a saga of SAGA_TYPE with the input --data (now, or scheduled with --countdown/--start-at)."""
    from workflows.operations.client import start_saga, wait_for

    data = load_data(raw)
    runtime()
    saga_id = start_saga(saga_type, data, idempotency_key=idempotency_key, countdown=countdown, start_at=start_at,
                         version=saga_version)
    if not wait:
        if as_json:
            echo_json({"saga_id": saga_id})
        else:
            click.echo(saga_id)
        return
    try:
        view = wait_for(saga_id, timeout=timeout)
    except TimeoutError as e:
        raise click.ClickException(str(e)) from None
    print_saga(view, as_json)


@click.command()
@click.argument("saga_id")
@click.option("--key", "by_key", is_flag=True, help="SAGA_ID is an idempotency key (a business id), never a run id.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(saga_id: str, by_key: bool, as_json: bool) -> None:
    """A saga's timeline: its steps, attempts, compensations and history, and what comes next: the
    steps still to run and the compensations that would run if it failed now. SAGA_ID is a run id,
    or, when no run has that id, the idempotency key a run was started under."""
    from workflows.operations.client import find_saga, what_next

    runtime()
    view = find_saga(saga_id, by_key=by_key)
    print_saga(view, as_json, what_next(view.id))


@click.command("list")
@click.option("--state", type=click.Choice(RUN_STATES, case_sensitive=False), help="Only runs in this state.")
@click.option("--type", "saga_type", help="Only runs of this saga type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0, 1_000_000_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(state: str | None, saga_type: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Saga runs, newest first."""
    from workflows.operations.client import list_sagas

    runtime()
    items, total = list_sagas(state=state.upper() if state else None, saga_type=saga_type, limit=limit,
                              offset=offset)
    if as_json:
        echo_json({"items": [v.to_dict() for v in items], "total": total, "limit": limit, "offset": offset})
        return
    table = Table(title=f"{len(items)} of {total} saga(s)", title_justify="left")
    for col in ("id", "type", "v", "state", "progress", "created", "updated"):
        table.add_column(col, no_wrap=col in ("id", "created", "updated"))
    for v in items:
        done = sum(1 for s in v.steps if s.status == "SUCCEEDED")
        table.add_row(v.id, v.saga_type, str(v.saga_version), styled(v.state), f"{done}/{len(v.steps)} succeeded",
                      time(v.created_at), time(v.updated_at))
    console().print(table)


@click.command()
@click.argument("saga_id")
@click.argument("name")
@click.option("--data", "raw", default="{}", show_default=True,
              help="The payload as JSON, @file to read a file, - for stdin.")
@click.option("--idempotency-key", help="Sending again with the same key changes nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def signal(obj: dict[str, str], saga_id: str, name: str, raw: str, idempotency_key: str | None,
           as_json: bool) -> None:
    """Send the signal NAME to the saga SAGA_ID (the wait parked on it, or the next one, takes it)."""
    from workflows.operations.signals import signal as send

    payload = load_data(raw)
    runtime()
    answer = send(saga_id, name, payload, idempotency_key=idempotency_key, who=obj["who"])
    if as_json:
        echo_json(answer.to_dict())
        return
    x = answer.signal
    what = ("already recorded: nothing changed" if answer.duplicate else
            f"consumed by {x.consumed_by}" if x.consumed_by else "kept until its wait begins")
    line = Text(f"signal {x.name} ({x.idempotency_key}) to saga {saga_id}: {what}; saga now ")
    line.append_text(styled(answer.state))
    console().print(line)


COMMANDS = (start, status, list_, signal)
