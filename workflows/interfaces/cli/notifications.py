"""`sagas notifications`: the runs that needed a person, and every delivery attempt."""
from __future__ import annotations

import click
from rich.table import Table

from workflows.interfaces.cli.output import console, echo_json, runtime, short, styled, time


@click.command("notifications")
@click.option("--saga", "saga_id", help="Only the notifications of this saga.")
@click.option("--state", type=click.Choice(["PENDING", "DELIVERED", "LOGGED"], case_sensitive=False),
              help="PENDING: the webhook has not taken them yet.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with every attempt).")
def notifications(saga_id: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """Runs that needed a person (FAILED, a dead letter, a lost worker, no progress), newest first,
    with their delivery attempts."""
    from workflows.operations.notifications import list_notifications

    runtime()
    items = list_notifications(saga_id=saga_id, state=state.upper() if state else None, limit=limit)
    if as_json:
        echo_json([n.to_dict() for n in items])
        return
    table = Table(title=f"{len(items)} notification(s)", title_justify="left")
    for col in ("id", "kind", "saga type", "state", "reason", "created", "attempts"):
        table.add_column(col, no_wrap=col in ("id", "created"))
    for n in items:
        tries = "; ".join(f"{time(a.at)} {a.target} {a.status_code or ''}{' ok' if a.ok else ' ' + (a.error or '')}"
                          for a in n.attempt_log)
        table.add_row(n.id, n.kind, n.saga_type, styled(n.state), short(n.reason, 60), time(n.created_at),
                      short(tries, 120))
    console().print(table)


COMMANDS = [notifications]
