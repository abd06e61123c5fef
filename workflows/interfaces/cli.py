"""`sagas`: operate sagas from a terminal.

    sagas start order_fulfillment --data @order.json --idempotency-key order-1234
    sagas status <saga id>            sagas list --state FAILED
    sagas retry|resume|cancel <id>    sagas dlq list|show|redrive|discard
    sagas dlq redrive --type order_fulfillment --step process_payment --all
    sagas signal <id> approval --data '{"approved": true}' --idempotency-key approval-1234
    sagas sweep    sagas migrate    sagas --app myproject.celery status <id>
    sagas versions                    sagas move <id> --to-version 2 --reason ...

Read commands take `--json` for scripts. Exit codes: 0 done, 1 refused or not found (the
reason on stderr), 2 usage error. Configuration comes from the SAGA_* environment variables.
Like `celery -A`, `--app` (env SAGA_APP, default `worker`) names the deployment's Celery-app
module, which installs the saga runtime; it is imported only by the commands that need it.
"""
from __future__ import annotations

import getpass
import importlib
import json
import sys
from datetime import datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workflows.core.state import RunStatus
from workflows.core.errors import SagaError

STATE_STYLE = {"RUNNING": "cyan", "WAITING": "blue", "SCHEDULED": "dim cyan",
               "COMPENSATING": "magenta", "COMPLETED": "green", "COMPENSATED": "yellow",
               "FAILED": "bold red", "SUCCEEDED": "green", "PENDING": "dim", "TIMED_OUT": "red",
               "COMPENSATION_FAILED": "bold red", "OPEN": "bold red", "REDRIVEN": "green", "DISCARDED": "dim"}
RUN_STATES = tuple(s.value for s in RunStatus)


class SagaGroup(click.Group):
    """Turns the errors an operator can cause into a message on stderr and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        import kombu.exceptions
        import sqlalchemy.exc

        try:
            return super().invoke(ctx)
        except SagaError as e:
            raise click.ClickException(str(e)) from None
        except kombu.exceptions.OperationalError as e:
            raise click.ClickException(f"the broker is not answering: {e}") from None
        except sqlalchemy.exc.OperationalError as e:
            raise click.ClickException(f"the database is not answering: {str(e.orig).strip()}") from None


def _default_operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container with an arbitrary uid)
        return "operator"


def _runtime() -> Any:
    """Import the --app module (it builds the Celery app and installs the runtime), lazily:
    `sagas --help` and `sagas migrate` need neither the module nor a server."""
    from workflows.runtime.container import get_runtime

    name = click.get_current_context().find_root().obj["app"]
    try:
        importlib.import_module(name)
    except ImportError as e:
        raise click.ClickException(
            f"cannot import the Celery app module {name!r} (--app, env SAGA_APP): {e}. Run from the folder "
            "that holds it, or put it on PYTHONPATH") from None
    try:
        return get_runtime()
    except RuntimeError:
        raise click.ClickException(f"the module {name!r} (--app, env SAGA_APP) installed no saga runtime: "
                                   "it must call workflows.install(app)") from None


def _console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def _styled(value: str | None) -> Text:
    return Text(value or "", style=STATE_STYLE.get(value or "", ""))


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value else ""


def _short(value: Any, width: int = 70) -> str:
    s = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return s if len(s) <= width else s[: width - 1] + "…"


def _load_data(raw: str) -> Any:
    if raw == "-":
        raw = sys.stdin.read()
    elif raw.startswith("@"):
        try:
            with open(raw[1:], encoding="utf-8") as f:
                raw = f.read()
        except OSError as e:
            raise click.BadParameter(f"cannot read {raw[1:]}: {e.strerror}", param_hint="--data") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e})", param_hint="--data") from None


@click.group(cls=SagaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--app", "app_module", envvar="SAGA_APP", default="worker", show_default=True,
              help="The module of your Celery app, which installs the saga runtime, as for `celery -A` "
                   "(env SAGA_APP).")
@click.option("--who", envvar="SAGA_OPERATOR", default=_default_operator, show_default="your user name",
              help="Who acts, for the saga's history (env SAGA_OPERATOR).")
@click.pass_context
def main(ctx: click.Context, app_module: str, who: str) -> None:
    """Start, inspect and operate sagas (configuration from SAGA_* variables)."""
    ctx.obj = {"who": who, "app": app_module}


# ------------------------------------------------------------------ sagas


@main.command()
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

    data = _load_data(raw)
    _runtime()
    saga_id = start_saga(saga_type, data, idempotency_key=idempotency_key, countdown=countdown, start_at=start_at,
                         version=saga_version)
    if not wait:
        if as_json:
            _echo_json({"saga_id": saga_id})
        else:
            click.echo(saga_id)
        return
    try:
        view = wait_for(saga_id, timeout=timeout)
    except TimeoutError as e:
        raise click.ClickException(str(e)) from None
    _print_saga(view, as_json)


@main.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(saga_id: str, as_json: bool) -> None:
    """A saga's timeline: its steps, attempts, compensations and history."""
    from workflows.operations.client import get_saga

    _runtime()
    _print_saga(get_saga(saga_id), as_json)


@main.command("list")
@click.option("--state", type=click.Choice(RUN_STATES, case_sensitive=False), help="Only runs in this state.")
@click.option("--type", "saga_type", help="Only runs of this saga type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, show_default=True, type=click.IntRange(0, 1_000_000_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(state: str | None, saga_type: str | None, limit: int, offset: int, as_json: bool) -> None:
    """Saga runs, newest first."""
    from workflows.operations.client import list_sagas

    _runtime()
    items, total = list_sagas(state=state.upper() if state else None, saga_type=saga_type, limit=limit,
                              offset=offset)
    if as_json:
        _echo_json({"items": [v.to_dict() for v in items], "total": total, "limit": limit, "offset": offset})
        return
    table = Table(title=f"{len(items)} of {total} saga(s)", title_justify="left")
    for col in ("id", "type", "v", "state", "progress", "created", "updated"):
        table.add_column(col, no_wrap=col in ("id", "created", "updated"))
    for v in items:
        done = sum(1 for s in v.steps if s.status == "SUCCEEDED")
        table.add_row(v.id, v.saga_type, str(v.saga_version), _styled(v.state), f"{done}/{len(v.steps)} succeeded",
                      _time(v.created_at), _time(v.updated_at))
    _console().print(table)


@main.command()
@click.argument("saga_id")
@click.option("--step", help="The step to dispatch again (default: the stuck or in-flight one).")
@click.option("--reason", default="", help="Why, for the history.")
@click.pass_obj
def retry(obj: dict[str, str], saga_id: str, step: str | None, reason: str) -> None:
    """Dispatch a step again now: a stuck compensation, or an in-flight step."""
    from workflows.operations.actions import retry_step

    _runtime()
    _acted(retry_step(saga_id, step, reason=reason, who=obj["who"]), "retried")


@main.command()
@click.argument("saga_id")
@click.option("--reason", default="", help="Why, for the history.")
@click.pass_obj
def resume(obj: dict[str, str], saga_id: str, reason: str) -> None:
    """Resume the compensation of a FAILED saga once its cause is fixed."""
    from workflows.operations.actions import resume as resume_saga

    _runtime()
    _acted(resume_saga(saga_id, reason=reason, who=obj["who"]), "resumed")


@main.command()
@click.argument("saga_id")
@click.option("--reason", required=True, help="Why, for the history.")
@click.pass_obj
def cancel(obj: dict[str, str], saga_id: str, reason: str) -> None:
    """Cancel a RUNNING saga: what it did so far is compensated."""
    from workflows.operations.actions import cancel as cancel_saga

    _runtime()
    _acted(cancel_saga(saga_id, reason=reason, who=obj["who"]), "cancelled")


@main.command()
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

    payload = _load_data(raw)
    _runtime()
    answer = send(saga_id, name, payload, idempotency_key=idempotency_key, who=obj["who"])
    if as_json:
        _echo_json(answer.to_dict())
        return
    x = answer.signal
    what = ("already recorded: nothing changed" if answer.duplicate else
            f"consumed by {x.consumed_by}" if x.consumed_by else "kept until its wait begins")
    line = Text(f"signal {x.name} ({x.idempotency_key}) to saga {saga_id}: {what}; saga now ")
    line.append_text(_styled(answer.state))
    _console().print(line)


@main.command()
@click.argument("saga_id")
@click.option("--to-version", "to_version", required=True, type=click.IntRange(1),
              help="The newer version of its saga to drive the run from now on.")
@click.option("--reason", required=True, help="Why, for the history.")
@click.pass_obj
def move(obj: dict[str, str], saga_id: str, to_version: int, reason: str) -> None:
    """Move a FAILED or stuck run to a newer, compatible version of its saga (refused, with the
    reason, when the version differs where the run has progressed)."""
    from workflows.operations.versions import migrate as migrate_run

    _runtime()
    view = migrate_run(saga_id, to_version, reason=reason, who=obj["who"])
    _acted(view, f"moved to version {view.saga_version}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def versions(as_json: bool) -> None:
    """Each saga's versions: fingerprint, runs by state, live workers holding it. A version whose
    `in flight` is 0 can be retired."""
    from workflows.operations.versions import version_report

    rt = _runtime()
    report = version_report(rt)
    if as_json:
        _echo_json([{**v.to_dict(), "active": v.active} for v in report])
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
    _console().print(table)


def _acted(view: Any, verb: str) -> None:
    line = Text(f"saga {view.id} {verb}: now ")
    line.append_text(_styled(view.state))
    _console().print(line)


# ------------------------------------------------------------------ dead letters


@main.group(cls=SagaGroup)
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

    _runtime()
    status = status.upper()
    items = list_dead_letters(None if status == "ALL" else status, saga_id=saga_id, limit=limit)
    if as_json:
        _echo_json([d.to_dict() for d in items])
        return
    table = Table(title=f"{len(items)} dead letter(s)", title_justify="left")
    for col in ("id", "saga", "step", "kind", "status", "attempts", "exception", "created"):
        table.add_column(col, no_wrap=col in ("id", "saga", "created"))
    for d in items:
        table.add_row(d.id, d.saga_id or "", d.step or "", d.kind, _styled(d.status), str(d.attempts),
                      _short(d.exception, 60), _time(d.created_at))
    _console().print(table)


@dlq.command("show")
@click.argument("dl_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(dl_id: str, as_json: bool) -> None:
    """One dead letter with its message and traceback."""
    from workflows.operations.dead_letters import get_dead_letter

    _runtime()
    d = get_dead_letter(dl_id)
    if as_json:
        _echo_json(d.to_dict())
        return
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for label, value in (("id", d.id), ("saga", d.saga_id), ("step", d.step), ("kind", d.kind),
                         ("task", d.task_name), ("queue", d.queue), ("status", d.status),
                         ("resolution", d.resolution), ("attempts", d.attempts), ("exception", d.exception),
                         ("created", _time(d.created_at)), ("resolved", _time(d.resolved_at)),
                         ("args", _short(d.args, 120)), ("kwargs", _short(d.kwargs, 120))):
        table.add_row(label, _styled(d.status) if label == "status" else Text(str(value or "")))
    console = _console()
    console.print(table)
    if d.traceback:
        console.print(Text(d.traceback.rstrip(), style="dim"))


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
        _runtime()
        done = redrive_all(saga_type, step, who=obj["who"], reason=reason)
        if as_json:
            _echo_json({"saga_type": done.saga_type, "step": done.step, "redriven": done.redriven,
                        "refused": done.refused})
        else:
            click.echo(f"{len(done.redriven)} dead letter(s) of {saga_type}/{step} redriven"
                       + (f", {len(done.refused)} refused" if done.refused else ""))
            for dl, why in done.refused.items():
                click.echo(f"refused {dl}: {why}", err=True)
        if done.refused:
            sys.exit(1)
        return
    _runtime()
    d = redrive(dl_id, who=obj["who"], reason=reason)
    click.echo(f"dead letter {d.id} {d.status.lower()}: {d.resolution or ''}".rstrip(": "))


@dlq.command("discard")
@click.argument("dl_id")
@click.option("--reason", required=True, help="Why it needs no redrive.")
@click.pass_obj
def dlq_discard(obj: dict[str, str], dl_id: str, reason: str) -> None:
    """Close a dead letter without redriving it."""
    from workflows.operations.dead_letters import discard

    _runtime()
    d = discard(dl_id, who=obj["who"], reason=reason)
    click.echo(f"dead letter {d.id} {d.status.lower()}: {d.resolution or ''}".rstrip(": "))


# ------------------------------------------------------------------ maintenance


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sweep(as_json: bool) -> None:
    """Act now on every run past a deadline (what celery beat does every SAGA_SWEEP_INTERVAL)."""
    from workflows.operations.sweeper import sweep as run_sweep

    report = run_sweep(_runtime())
    if as_json:
        _echo_json({**report.__dict__, "counts": report.counts()})
        return
    for what, ids in report.__dict__.items():
        click.echo(f"{what.replace('_', ' ')}: {len(ids)}" + (f"  {' '.join(ids)}" if ids else ""))


@main.command()
@click.option("--older-than", "older_than", required=True, callback=lambda c, p, v: _duration(v),
              help="Delete runs that ended longer ago than this: 30d, 12h, 90m, 3600s.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Runs deleted per transaction.")
def prune(older_than: timedelta, batch: int) -> None:
    """Delete the runs that ended (COMPLETED, COMPENSATED) long ago, with their history.

    Never a run with an open dead letter, a FAILED run or a run in flight."""
    from workflows.operations.retention import prune as run_prune

    click.echo(f"pruned {run_prune(_runtime(), older_than, batch=batch)} run(s) that ended over {older_than} ago")


def _duration(raw: str) -> timedelta:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if raw[-1:] in units and float(raw[:-1]) >= 0:
            return timedelta(seconds=float(raw[:-1]) * units[raw[-1]])
    except ValueError:
        pass
    raise click.BadParameter(f"{raw!r} is not a duration like 30d, 12h, 90m or 3600s")


@main.command()
@click.option("--url", help="SQLAlchemy URL (default: SAGA_DATABASE_URL, or the embedded SQLite file).")
@click.option("--schema", help="PostgreSQL schema for the saga tables (created if missing; pass it on every "
                               "migrate). The store and the app find the tables through their search_path.")
@click.option("--example-tables/--no-example-tables", default=True, show_default=True,
              help="Also the example shop's tables (tasks/); --no-example-tables in an application's database.")
def migrate(url: str | None, schema: str | None, example_tables: bool) -> None:
    """Bring the database schema to the newest revision (safe to repeat)."""
    from sqlalchemy.engine import make_url

    from workflows.store.db import migrate as run_migrations
    from workflows.runtime.settings import get_settings

    url = url or get_settings().resolved_database_url()
    try:
        run_migrations(url, example_tables=example_tables, schema=schema)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    where = f" (schema {schema})" if schema else ""
    click.echo(f"{make_url(url).render_as_string(hide_password=True)}{where}: schema is at the newest revision")


# ------------------------------------------------------------------ the timeline


def _print_saga(view: Any, as_json: bool) -> None:
    if as_json:
        _echo_json(view.to_dict())
    else:
        _show_saga(view)


def _redelivered(s: Any) -> Text:
    """Deliveries after a lost worker: the action's, then the compensation's ('2', '2 + 1 comp.')."""
    parts = [str(s.redeliveries)] if s.redeliveries else []
    if s.compensation_redeliveries:
        parts.append(f"{s.compensation_redeliveries} comp.")
    return Text(" + ".join(parts), style="yellow")


def _show_saga(v: Any) -> None:
    console = _console()
    head = Text(f"saga {v.id}  ", style="bold")
    head.append(f"{v.saga_type} v{v.saga_version}  ")
    head.append_text(_styled(v.state))
    console.print(head)
    console.print(f"saga version {v.saga_version}   created {_time(v.created_at)}   updated {_time(v.updated_at)}   "
                  f"run version {v.version}"
                  + (f"   idempotency key {v.idempotency_key}" if v.idempotency_key else ""))
    if v.failure_reason:
        console.print(Text(f"reason: {v.failure_reason}", style="red"))
    if v.state == "SCHEDULED" and v.deadline_at:
        console.print(Text(f"starts at {_time(v.deadline_at)}", style="cyan"))
    for s in v.steps:
        if s.status == "WAITING" and s.task_id:
            console.print(Text(f"waiting: {s.name} for signal {s.task_id.removeprefix('wait:')!r} until "
                               f"{_time(s.deadline_at)}", style="blue"))
    if v.parent_id:
        console.print(f"child of saga {v.parent_id}, its step {v.parent_step!r}   (sagas status {v.parent_id})")
    for c in v.children:
        line = Text(f"child  {c.parent_step}: saga {c.id}  {c.saga_type}  ")
        line.append_text(_styled(c.state))
        console.print(line)

    steps = Table(title="steps", title_justify="left")
    for col in ("#", "step", "status", "attempts", "compensations", "redelivered", "started", "finished",
                "compensated", "result / error"):
        steps.add_column(col, no_wrap=col in ("started", "finished", "compensated"))
    for s in v.steps:
        detail = Text(_short(s.error), style="red") if s.error else Text(_short(s.result) if s.result else "")
        steps.add_row(str(s.index + 1), s.name, _styled(s.status), str(s.attempts), str(s.compensation_attempts),
                      _redelivered(s), _time(s.started_at), _time(s.finished_at), _time(s.compensated_at), detail)
    console.print(steps)

    history = Table(title="history", title_justify="left")
    for col in ("+seconds", "event", "step", "attempt", "detail"):
        history.add_column(col, no_wrap=col != "detail")
    for e in v.events:
        shown = {k: val for k, val in e.detail.items() if k not in ("by", "deadline_at", "task_id") and val}
        history.add_row(f"{(e.at - v.created_at).total_seconds():8.3f}", _styled(e.type) if e.type.startswith("Saga")
                        else Text(e.type), e.step or "", str(e.attempt or ""), _short(shown, 90) if shown else "")
    console.print(history)

    if v.signals:
        sigs = Table(title="signals", title_justify="left")
        for col in ("received", "signal", "who", "idempotency key", "consumed by", "payload"):
            sigs.add_column(col, no_wrap=col != "payload")
        for x in v.signals:
            sigs.add_row(_time(x.received_at), x.name, x.who, x.idempotency_key, x.consumed_by or "(kept)",
                         _short(x.payload, 60))
        console.print(sigs)

    if v.dead_letters:
        dls = Table(title="dead letters", title_justify="left")
        for col in ("id", "step", "kind", "status", "attempts", "exception"):
            dls.add_column(col, no_wrap=col == "id")
        for d in v.dead_letters:
            dls.add_row(d.id, d.step or "", d.kind, _styled(d.status), str(d.attempts), _short(d.exception, 60))
        console.print(dls)


main.add_command(importlib.import_module("workflows.interfaces.upgrade_command").check_upgrade)

if __name__ == "__main__":
    main()
