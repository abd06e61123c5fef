"""`sagas`: operate sagas from a terminal.

    sagas start order_fulfillment --data @order.json --idempotency-key order-1234
    sagas status <saga id>            sagas list --state FAILED
    sagas retry|resume|cancel <id>    sagas dlq list|show|redrive|discard
    sagas dlq redrive --type order_fulfillment --step process_payment --all
    sagas signal <id> approval --data '{"approved": true}' --idempotency-key approval-1234
    sagas sweep    sagas migrate    sagas --app myproject.celery status <id>
    sagas versions                    sagas move <id> --to-version 2 --reason ...
    sagas credentials create alice --role operator      sagas credentials list|expire|revoke|audit
    sagas kafka-commands              sagas redis-rebuild

Read commands take `--json` for scripts. Exit codes: 0 done, 1 refused or not found (the
reason on stderr; a database without the saga tables: "run `sagas migrate`"), 2 usage error.
Configuration comes from the SAGA_* environment variables.
Like `celery -A`, `--app` (env SAGA_APP, default `worker`) names the deployment's Celery-app
module, which installs the saga runtime; it is imported only by the commands that need it.
"""
from __future__ import annotations

import getpass
import importlib
import logging
import os
import sys
from typing import Any

import click

from workflows.core.errors import SagaError
from workflows.interfaces.cli import (credentials, dead_letters, maintenance, notifications, operate, projections, runs,
                                     upgrade)

__all__ = ["main"]


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
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as e:
            reason = str(e.orig).strip().splitlines()[0]
            if _schema_missing(e):
                raise click.ClickException(
                    f"the saga tables are missing or behind this version in SAGA_DATABASE_URL's database "
                    f"({reason}): run `sagas migrate`") from None
            if isinstance(e, sqlalchemy.exc.ProgrammingError):
                raise
            raise click.ClickException(f"the database is not answering: {reason}") from None


UNDEFINED_TABLE, UNDEFINED_COLUMN = "42P01", "42703"
"""PostgreSQL's SQLSTATEs for a table or column that does not exist."""


def _schema_missing(e: Exception) -> bool:
    """The database answered, but a saga table or column is not there: not migrated (or not to this
    version). PostgreSQL says so by SQLSTATE (psycopg 3 `sqlstate`, psycopg2 `pgcode`), SQLite in words."""
    orig = getattr(e, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return code in (UNDEFINED_TABLE, UNDEFINED_COLUMN) or str(orig).startswith(("no such table", "no such column"))


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
    if "" not in sys.path and os.getcwd() not in sys.path:  # as `celery -A`: the app is in the current folder
        sys.path.insert(0, os.getcwd())
    try:
        importlib.import_module(name)
        _quiet_logs()
    except ImportError as e:
        raise click.ClickException(
            f"cannot import the Celery app module {name!r} (--app, env SAGA_APP): {e}. Run from the folder "
            "that holds it, or put it on PYTHONPATH") from None
    try:
        return get_runtime()
    except RuntimeError:
        raise click.ClickException(f"the module {name!r} (--app, env SAGA_APP) installed no saga runtime: "
                                   "it must call workflows.install(app)") from None


def _quiet_logs() -> None:
    """A command's output is what it prints: the runtime's INFO lines (a worker's JSON log, set up
    by the app module) are not, so below WARNING they are off unless SAGA_LOG_LEVEL asks for them.
    Logs go to stderr in any case; stdout is only the command's output."""
    if not os.environ.get("SAGA_LOG_LEVEL"):
        logger = logging.getLogger("workflows")
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


@click.group(cls=SagaGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--app", "app_module", envvar="SAGA_APP", default="worker", show_default=True,
              help="The module of your Celery app, which installs the saga runtime, as for `celery -A` "
                   "(env SAGA_APP).")
@click.option("--who", envvar="SAGA_OPERATOR", default=_default_operator, show_default="your user name",
              help="Who acts, for the saga's history (env SAGA_OPERATOR).")
@click.pass_context
def main(ctx: click.Context, app_module: str, who: str) -> None:
    """Start, inspect and operate sagas (configuration from SAGA_* variables)."""
    # The commands reach the runtime through `runtime` (output.runtime), which calls this module's
    # `_runtime` when the command runs: a test may replace `cli._runtime` with its own runtime.
    ctx.obj = {"who": who, "app": app_module, "runtime": lambda: _runtime()}


for command in (*runs.COMMANDS, *operate.COMMANDS, dead_letters.dlq, *maintenance.COMMANDS, *upgrade.COMMANDS,
                *credentials.COMMANDS, *projections.COMMANDS, *notifications.COMMANDS):
    main.add_command(command)

