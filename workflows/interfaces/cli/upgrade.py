"""`sagas check-upgrade`: the upgrade check (`operations.upgrade.check_upgrade`) as a command a CI
job runs before a deploy, with the code being deployed and the production database.

Exit codes: 0 every run in flight can be driven to its end by this code; 3 a run would be stranded
(each named, with why); 1 the check could not run (the database does not answer, the --app module
does not import).
"""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workflows.interfaces.cli.output import runtime

if TYPE_CHECKING:
    from workflows.operations.upgrade import UpgradeReport

STRANDED_EXIT = 3
"""The exit code when a run in flight would be stranded."""


@click.command("check-upgrade")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_upgrade(as_json: bool) -> None:
    """Check the code being deployed against the runs in flight: which it can drive to their end,
    which it would strand (their version or a task of theirs is gone), and how a move to the
    newest version would change their plan. Exits 3 when a run would be stranded."""
    from workflows.operations.upgrade import check_upgrade as check

    report = check(runtime().store)  # the --app module: this code's sagas and step tasks
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report)
    if not report.ok:
        sys.exit(STRANDED_EXIT)


def _print(report: UpgradeReport) -> None:
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{len(report.runs)} run(s) in flight, {len(report.stranded)} would be stranded",
                  title_justify="left")
    for col in ("saga", "version", "run", "state", "this code", "move to the newest"):
        table.add_column(col, no_wrap=col in ("saga", "run"))
    for v in report.versions:
        for r in v.runs:
            verdict = (Text("drives it to its end", style="green") if r.drivable
                       else Text("STRANDED: " + "; ".join(r.stranded_by), style="bold red"))
            if r.move is not None:
                move = f"to v{r.move.to_version}: " + ("; ".join(r.move.changes) or "no task changes")
            else:
                move = f"refused: {r.move_refused}" if r.move_refused else ""
            table.add_row(v.saga_type, str(v.saga_version), r.saga_id, r.state, verdict, move)
    console.print(table)
    for r in report.runs:
        if r.move is not None and r.move.changes:
            console.print(f"plan of {r.saga_id} on a move to v{r.move.to_version}:")
            console.print(f"  remaining steps     {r.move.remaining_before} → {r.move.remaining_after}")
            console.print(f"  compensation plan   {r.move.compensation_before} → {r.move.compensation_after}")
    if not report.ok:
        console.print(Text(f"{len(report.stranded)} run(s) would be stranded: keep their version and tasks "
                           "registered, or move them (sagas move <id> --to-version N) first", style="bold red"))


COMMANDS = (check_upgrade,)
