"""PostgreSQL databases of a test's own, next to the shared test database (TEST_PG_URL).

The shared database holds every module's runs; a test that sweeps it at a far-future `now`, or
counts what a search returns, sees them too. Such a test takes a database of its own.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from workflows.store.db import driver_arguments, engine_from_url

PG_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def plain_engine(url: str, **options: object) -> Engine:
    """`create_engine(url)` as an app would make it, with the driver options the URL carries
    (`?prepare_threshold=none` behind PgBouncer: `workflows.store.db.engine_from_url`)."""
    return engine_from_url(url, **options)


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as `pg_dump` and `psql` take it: no `+driver`, no driver options
    (`?prepare_threshold=none` behind PgBouncer, which libpq refuses)."""
    return make_url(driver_arguments(url)[0]).set(drivername="postgresql").render_as_string(hide_password=False)


def empty_pg_database(url: str) -> None:
    """Empty the database at `url` whatever is in it: its `public` schema dropped and made again.
    A suite's database may hold what another checkout left there (an alembic_version naming a
    revision this one does not have), which `downgrade_all` cannot undo."""
    engine = plain_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            c.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def server_engine() -> Engine:
    """An engine on the server's `postgres` database (through PgBouncer when TEST_PG_URL is)."""
    url, connect_args = driver_arguments(PG_URL)
    return create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT",
                         connect_args=connect_args)


def fresh_pg_database(suffix: str) -> str:
    """A new, empty PostgreSQL database next to the test one (`<test db>_<suffix>`); its URL."""
    name = f"{make_url(PG_URL).database}_{suffix}"
    with server_engine().connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    with server_engine().connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def own_pg_database(suffix: str) -> Iterator[str]:
    """A fresh database with the saga tables (migrated to head), dropped afterwards; its URL."""
    from workflows.store.db import migrate

    url = fresh_pg_database(suffix)
    try:
        migrate(url)
        yield url
    finally:
        drop_pg_database(url)
