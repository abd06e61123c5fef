"""Database engines and migrations, chosen by URL: PostgreSQL in production, SQLite embedded.

One engine per process and URL, created lazily (never inherited across a fork: call
`dispose_engines()` in a child). SQLite gets WAL, a busy timeout and `BEGIN IMMEDIATE`, so
concurrent writers in several worker processes queue up instead of failing.
"""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.RLock()
_engines: dict[tuple[int, str], Engine] = {}
_sessions: dict[tuple[int, str], sessionmaker[Session]] = {}
_statement_engines: dict[tuple[int, str], Engine] = {}

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
"""Alembic scripts, shipped inside the package so `pip install .` has them."""


def get_engine(url: str) -> Engine:
    return _per_process(_engines, url, lambda: _create(url))


def statement_engine(url: str) -> Engine:
    """`get_engine(url)` for single statements outside a transaction: reads, history notes and,
    on PostgreSQL, the one-statement transition (`store.transition_statement`), atomic by itself.

    On PostgreSQL an engine of its own whose connections are in autocommit: one round trip per
    statement instead of three (the driver sends `BEGIN` before the statement and `ROLLBACK` or
    `COMMIT` after it), and a pool that never switches a connection's mode. With psycopg 3
    (`postgresql+psycopg://`, the recommended driver) a statement run 5 times on a connection is
    prepared there, so the hot path's few statements are planned once per connection, not once
    per step (about half of PostgreSQL's CPU per saga; see README, benchmark). On SQLite it
    begins a plain (deferred) transaction: a snapshot, without the write lock.
    """
    if url.startswith("sqlite"):
        return _per_process(_statement_engines, url, lambda: get_engine(url).execution_options(saga_read=True))
    return _per_process(_statement_engines, url, lambda: _create(url, isolation_level="AUTOCOMMIT"))


def _per_process(cache: dict[tuple[int, str], Engine], url: str, make: Callable[[], Engine]) -> Engine:
    key = (os.getpid(), url)
    engine = cache.get(key)
    if engine is None:
        with _lock:
            engine = cache.get(key)
            if engine is None:
                engine = cache[key] = make()
    return engine


def session_factory(url: str) -> sessionmaker[Session]:
    key = (os.getpid(), url)
    factory = _sessions.get(key)
    if factory is None:
        factory = sessionmaker(get_engine(url), expire_on_commit=False)
        _sessions[key] = factory
    return factory


def dispose_engines() -> None:
    """Forget engines created by another process (after fork) and close our own."""
    with _lock:
        for (pid, _), engine in [*_engines.items(), *_statement_engines.items()]:
            engine.dispose(close=pid == os.getpid())
        _engines.clear()
        _sessions.clear()
        _statement_engines.clear()


def _create(url: str, **options: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            # Take the write lock up front: a deferred transaction that reads, then writes, would
            # fail with SQLITE_BUSY when another process committed in between. Reads (`statement_engine`)
            # take a snapshot only, and do not queue behind writers.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("saga_read") else "BEGIN IMMEDIATE")

        return engine
    # No pre-ping (a round trip per checkout, two per step): a connection that died with the
    # server raises OperationalError, the pool is invalidated, and the task is retried by Celery's
    # autoretry (orchestrator.DELIVERY_OPTIONS); callers outside a task retry or fail loudly.
    url, connect_args = driver_arguments(url)
    try:
        return create_engine(url, pool_size=5, max_overflow=5, pool_recycle=1800, connect_args=connect_args,
                             **options)
    except ModuleNotFoundError as e:  # the driver is an extra of the wheel: say which
        raise _missing_driver(url, e) from e


def _missing_driver(url: str, e: ModuleNotFoundError) -> ModuleNotFoundError:
    from workflows._extras import DRIVER_EXTRAS, missing_extra

    top = (e.name or "").split(".")[0]
    if top not in DRIVER_EXTRAS:
        return e
    scheme = url.split("://", 1)[0]
    return missing_extra(DRIVER_EXTRAS[top], top, f"the database URL {scheme}://…")


PREPARE_THRESHOLD = "prepare_threshold"
"""The URL query parameter (`?prepare_threshold=none`) that sets psycopg 3's `prepare_threshold`."""


def driver_arguments(url: str) -> tuple[str, dict[str, Any]]:
    """`url` without the query parameters that are the driver's connection options rather than the
    server's, and those options: `prepare_threshold` (psycopg 3) is `none` (never prepare a statement:
    PgBouncer in transaction mode before 1.21, whose next transaction may run on another server
    connection, where the statement was never prepared) or a number of executions of a statement on a
    connection before it is prepared (psycopg's default: 5)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if PREPARE_THRESHOLD not in u.query:
        return url, {}
    raw = u.query[PREPARE_THRESHOLD]
    value = raw if isinstance(raw, str) else raw[-1]
    if u.get_driver_name() != "psycopg":
        raise ValueError(f"?{PREPARE_THRESHOLD}= is an option of psycopg 3 (postgresql+psycopg://), not of "
                         f"{u.drivername}: remove it (psycopg2 never prepares statements)")
    threshold: int | None
    if value.strip().lower() in ("none", "never", ""):
        threshold = None
    else:
        try:
            threshold = int(value)
        except ValueError:
            raise ValueError(f"?{PREPARE_THRESHOLD}={value}: give `none` (never prepare, for PgBouncer in "
                             "transaction mode) or a whole number of executions") from None
    rest = u.difference_update_query([PREPARE_THRESHOLD])
    return rest.render_as_string(hide_password=False), {PREPARE_THRESHOLD: threshold}


def engine_from_url(url: str, **options: Any) -> Engine:
    """An engine of your own (your app's tables, beside the saga store's) on the saga store's URL:
    `create_engine` with the driver options the URL carries applied (`?prepare_threshold=none`
    behind PgBouncer, which plain `create_engine` would hand psycopg as a string)."""
    bare, merged = _with_driver_options(url, options)
    return create_engine(bare, **merged)


def async_engine_from_url(url: str, **options: Any) -> Any:
    """`engine_from_url` for asyncio: SQLAlchemy's `create_async_engine` with the URL's driver
    options applied (`postgresql+psycopg://` is async as well)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    bare, merged = _with_driver_options(url, options)
    return create_async_engine(bare, **merged)


def _with_driver_options(url: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(`url` without its driver options, `options` with them added to `connect_args`; the
    caller's own `connect_args` win)."""
    bare, connect_args = driver_arguments(url)
    if connect_args:
        options = {**options, "connect_args": {**connect_args, **options.get("connect_args", {})}}
    return bare, options


SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    """The Alembic config of the shipped migrations: the saga tables, nothing else (an application's
    own tables, the example shop's included, come from its own migrations)."""
    from alembic.config import Config

    cfg = Config()
    url, connect_args = driver_arguments(url)
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["saga_connect_args"] = connect_args
    return cfg


def migrate(url: str, *, schema: str | None = None) -> None:
    """Bring the schema at `url` to the newest revision (idempotent).

    `schema` (PostgreSQL): create that schema if missing and put the saga tables, and their own
    `alembic_version`, in it (the migration runs with `search_path` set to it). The store and the
    application then find them through their own `search_path` (README: "The saga tables in your
    database")."""
    from alembic import command

    if schema is not None:
        url = _in_schema(url, schema)
    command.upgrade(alembic_config(url), "head")


def downgrade_all(url: str, *, schema: str | None = None) -> None:
    """Drop every table the migrations made (tests)."""
    from alembic import command

    if schema is not None:
        url = _in_schema(url, schema)
    command.downgrade(alembic_config(url), "base")


def _in_schema(url: str, schema: str) -> str:
    """`url` with its sessions' `search_path` set to `schema`, created first if missing (PostgreSQL)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    url, connect_args = driver_arguments(url)
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        raise ValueError(f"a schema for the saga tables needs PostgreSQL, not {u.get_backend_name()}")
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"schema name {schema!r}: lower case letters, digits and _, starting with a letter or _")
    engine = create_engine(u, connect_args=connect_args)
    try:
        with engine.begin() as c:
            c.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()
    options = u.query.get("options")
    path = f"-csearch_path={schema}"
    joined = f"{options} {path}" if isinstance(options, str) and options else path
    u = u.update_query_dict({"options": joined})
    if connect_args:
        u = u.update_query_dict({PREPARE_THRESHOLD: str(connect_args[PREPARE_THRESHOLD]).lower()})
    return u.render_as_string(hide_password=False)
