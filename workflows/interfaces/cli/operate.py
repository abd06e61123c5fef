"""`sagas retry|resume|cancel|move|versions`: an operator's actions on a run, and the versions
runs are on."""
from __future__ import annotations

import click
from rich.table import Table
from rich.text import Text

from workflows.interfaces.cli.output import acted, console, echo_json, runtime


@click.command()
@click.argument("saga_id")
@click.option("--step", help="The step to dispatch again (default: the stuck or in-flight one).")
@click.option("--reason", default="", help="Why, for the history.")
@click.pass_obj
def retry(obj: dict[str, str], saga_id: str, step: str | None, reason: str) -> None:
    """Dispatch a step again now: a stuck compensation, or an in-flight step."""
    from workflows.operations.actions import retry_step

    runtime()
    acted(retry_step(saga_id, step, reason=reason, who=obj["who"]), "retried")


@click.command()
@click.argument("saga_id")
@click.option("--reason", default="", help="Why, for the history.")
@click.pass_obj
def resume(obj: dict[str, str], saga_id: str, reason: str) -> None:
    """Resume the compensation of a FAILED saga once its cause is fixed."""
    from workflows.operations.actions import resume as resume_saga

    runtime()
    acted(resume_saga(saga_id, reason=reason, who=obj["who"]), "resumed")


@click.command()
@click.argument("saga_id")
@click.option("--reason", required=True, help="Why, for the history.")
@click.pass_obj
def cancel(obj: dict[str, str], saga_id: str, reason: str) -> None:
    """Cancel a RUNNING saga: what it did so far is compensated."""
    from workflows.operations.actions import cancel as cancel_saga

    runtime()
    acted(cancel_saga(saga_id, reason=reason, who=obj["who"]), "cancelled")


@click.command()
@click.argument("saga_id")
@click.option("--to-version", "to_version", required=True, type=click.IntRange(1),
              help="The newer version of its saga to drive the run from now on.")
@click.option("--reason", required=True, help="Why, for the history.")
@click.pass_obj
def move(obj: dict[str, str], saga_id: str, to_version: int, reason: str) -> None:
    """Move a FAILED or stuck run to a newer, compatible version of its saga (refused, with the
    reason, when the version differs where the run has progressed)."""
    from workflows.operations.versions import migrate as migrate_run

    runtime()
    view = migrate_run(saga_id, to_version, reason=reason, who=obj["who"])
    acted(view, f"moved to version {view.saga_version}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def versions(as_json: bool) -> None:
    """Each saga's versions: fingerprint, runs by state, live workers holding it. A version whose
    `in flight` is 0 can be retired."""
    from workflows.operations.versions import version_report

    rt = runtime()
    report = version_report(rt)
    if as_json:
        echo_json([{**v.to_dict(), "active": v.active} for v in report])
        return
    table = Table(title=f"{len(report)} saga version(s)", title_justify="left")
    for col in ("saga", "version", "fingerprint", "in flight", "runs by state", "live workers"):
        table.add_column(col, no_wrap=col in ("saga", "fingerprint"))
    for v in report:
        runs = ", ".join(f"{state} {n}" for state, n in v.runs.items()) or "none"
        holders = Text(", ".join(v.workers)) if v.workers else Text(
            "none" + ("  ← runs in flight no worker can take" if v.active else ""), style="bold red" if v.active
            else "dim")
        table.add_row(v.saga_type, str(v.saga_version), v.fingerprint or "?", str(v.active), runs, holders)
    console().print(table)


COMMANDS = (retry, resume, cancel, move, versions)
