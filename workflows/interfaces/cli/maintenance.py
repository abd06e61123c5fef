"""`sagas sweep|prune|migrate`: what beat does on a schedule, retention, and the schema."""
from __future__ import annotations

from datetime import timedelta

import click

from workflows.interfaces.cli.output import echo_json, runtime


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sweep(as_json: bool) -> None:
    """Act now on every run past a deadline (what celery beat does every SAGA_SWEEP_INTERVAL)."""
    from workflows.operations.sweeper import sweep as run_sweep

    report = run_sweep(runtime())
    if as_json:
        echo_json({**report.__dict__, "counts": report.counts()})
        return
    for what, ids in report.__dict__.items():
        click.echo(f"{what.replace('_', ' ')}: {len(ids)}" + (f"  {' '.join(ids)}" if ids else ""))


def _duration(raw: str) -> timedelta:
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if raw[-1:] in units and float(raw[:-1]) >= 0:
            return timedelta(seconds=float(raw[:-1]) * units[raw[-1]])
    except ValueError:
        pass
    raise click.BadParameter(f"{raw!r} is not a duration like 30d, 12h, 90m or 3600s")


@click.command()
@click.option("--older-than", "older_than", required=True, callback=lambda c, p, v: _duration(v),
              help="Delete runs that ended longer ago than this: 30d, 12h, 90m, 3600s.")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(1, 100_000),
              help="Runs deleted per transaction.")
def prune(older_than: timedelta, batch: int) -> None:
    """Delete the runs that ended (COMPLETED, COMPENSATED) long ago, with their history.

    Never a run with an open dead letter, a FAILED run or a run in flight."""
    from workflows.operations.retention import prune as run_prune

    click.echo(f"pruned {run_prune(runtime(), older_than, batch=batch)} run(s) that ended over {older_than} ago")


@click.command()
@click.option("--url", help="SQLAlchemy URL (default: SAGA_DATABASE_URL, or the embedded SQLite file).")
@click.option("--schema", help="PostgreSQL schema for the saga tables (created if missing; pass it on every "
                               "migrate). The store and the app find the tables through their search_path.")
@click.option("--example-tables/--no-example-tables", default=False, hidden=True,
              help="Up to 0.1.0: whether to create the example shop's tables too. Only the saga tables now; "
                   "--no-example-tables is accepted and changes nothing.")
def migrate(url: str | None, schema: str | None, example_tables: bool) -> None:
    """Bring the saga tables to the newest revision (safe to repeat). Only the saga tables: your
    application's own come from its own migrations."""
    from sqlalchemy.engine import make_url

    from workflows.runtime.settings import get_settings
    from workflows.store.db import driver_arguments
    from workflows.store.db import migrate as run_migrations

    if example_tables:
        raise click.UsageError("the example shop's tables are the example's own now: in the repository, "
                               "`python -m tasks.schema` (or `make migrate`) creates them")
    url = url or get_settings().resolved_database_url()
    bare = driver_arguments(url)[0]  # the database, not psycopg's options (?prepare_threshold=none)
    where = make_url(bare).render_as_string(hide_password=True) + (f" (schema {schema})" if schema else "")
    before = _schema_state(url, schema)
    try:
        run_migrations(url, schema=schema)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    after = _schema_state(url, schema)
    click.echo(f"{where}: {_what_changed(url, before, after)}; schema is at the newest revision")


def _schema_state(url: str, schema: str | None) -> tuple[tuple[str, ...], int] | None:
    """The revisions recorded in the database (its alembic_version rows) and its number of tables;
    None where there is nothing to read (a schema on SQLite, refused by the migration itself)."""
    from sqlalchemy import column, inspect, select, table
    from sqlalchemy.engine import make_url

    from workflows.store.db import engine_from_url

    if schema is not None and make_url(url).get_backend_name() != "postgresql":
        return None
    engine = engine_from_url(url)
    try:
        names = inspect(engine).get_table_names(schema=schema)
        tables = len(names) - ("alembic_version" in names)
        if "alembic_version" not in names:
            return (), tables
        versions = table("alembic_version", column("version_num"), schema=schema)
        with engine.connect() as c:
            return tuple(sorted(c.execute(select(versions.c.version_num)).scalars())), tables
    finally:
        engine.dispose()


def _what_changed(url: str, before: tuple[tuple[str, ...], int] | None,
                  after: tuple[tuple[str, ...], int] | None) -> str:
    """What `migrate` did: from which revision to which, how many applied, tables created."""
    from alembic.script import ScriptDirectory

    from workflows.store.db import alembic_config

    if before is None or after is None:
        return "migrated"
    (old, old_tables), (new, new_tables) = before, after
    if old == new:
        return f"nothing to apply, already at {', '.join(new) or 'no revision'}"
    scripts = ScriptDirectory.from_config(alembic_config(url))
    applied = len(list(scripts.iterate_revisions(new, old or "base")))
    origin = ", ".join(old) if old else "an empty database"
    created = new_tables - old_tables
    return (f"migrated from {origin} to {', '.join(new)}: {applied} migration(s) applied"
            + (f", {created} table(s) created" if created > 0 else ""))




@click.command("rotate-key")
@click.option("--batch", default=200, show_default=True, type=click.IntRange(1, 10_000),
              help="Rows re-sealed per transaction.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rotate_key(batch: int, as_json: bool) -> None:
    """Re-seal every stored sensitive field under the current key (the first of SAGA_FIELD_KEYS),
    in batches, while the workers run. Afterwards no envelope names an older key: drop it from
    SAGA_FIELD_KEYS once the messages sent before the rotation are delivered."""
    from workflows.operations.rotation import rotate

    report = rotate(runtime(), batch=batch)
    if as_json:
        echo_json(report.__dict__)
        return
    click.echo(f"re-sealed under key {report.key!r}: {report.runs} run(s), {report.step_results} step result(s), "
               f"{report.dead_letters} dead letter(s), {report.events} event(s), {report.history} history row(s), "
               f"{report.signals} signal(s), {report.projections} projection record(s) "
               f"in {report.batches} batch(es); still under another key: {report.remaining or 'none'}")


COMMANDS = (sweep, prune, migrate, rotate_key)
