"""Private: the hot path's statements on the driver's cursor, SQLAlchemy's per-execution work done once.

A Core statement run through `Connection.execute` is looked up in the compiled cache, its
parameters are processed and typed, an execution context and a result proxy are built: about
100 to 400 µs per call on PostgreSQL with psycopg 3 (`bench/driver_timing.py`: the run's read
432 µs through `Connection.execute`, 296 µs here; CPU per step 1044 against 694 µs). The three
statements every step runs (`PostgresStore.load`, `.commit`, `.create_run`) are compiled here
once per process, with their types' bind and result processors, and run on the pooled
connection's psycopg cursor; nothing else uses this module.

It reads SQLAlchemy's compiler and pool internals (`SQLCompiler.bind_names`, `escaped_bind_names`,
`BindParameter.effective_value`, bind/result processors, the pool's connection fairy,
`Dialect.is_disconnect`, `DBAPIError.instance`): pyproject.toml pins SQLAlchemy and psycopg to
the minor versions `tests/servers/test_driver.py` runs against.

    LOAD = select(...).where(SAGAS.c.id == bindparam("saga_id"))  # built once: a module constant
    with driver_cursor(url) as cur:
        rows = compiled_for(url)(LOAD).rows(cur, {"saga_id": saga_id})  # compiled on first use

The SQL, the parameters sent and the values read are SQLAlchemy's own (a test compares them);
a driver error is raised as SQLAlchemy's (`IntegrityError`, `OperationalError`...), and a
connection the server dropped is invalidated in the pool, as `Connection.execute` does.
"""
from __future__ import annotations

import functools
import re
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement, Select
from sqlalchemy.sql.compiler import SQLCompiler

from workflows.store.db import statement_engine


STATEMENT_LISTENERS: list[Callable[[str], None]] = []
"""Each called with a statement's SQL before it is sent: what `before_cursor_execute` is to
SQLAlchemy's statements (the benchmark counts round trips with it)."""


class DriverStatement:
    """`statement` compiled for `dialect`: its SQL string, the default values of its literal
    parameters, the bind processors of its typed parameters and, for a SELECT, a row type with
    the result processors of its columns."""

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        self.dialect = dialect
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        if compiled.escaped_bind_names:  # never for our names: the SQL would not name the parameters given
            raise ValueError(f"parameter names need escaping: {sorted(compiled.escaped_bind_names)}")
        self.sql = compiled.string
        self.native: tuple[str, tuple[str, ...]] | None = native_form(self.sql) if dialect.driver == "psycopg" else None
        """psycopg 3: the SQL with PostgreSQL's own `$n` placeholders and the parameter names in their
        order, run on a `RawCursor` (no conversion of `%(name)s` per execution: psycopg caches it
        only for statements under 4 KB, and a creation's is longer)."""
        binds = {name: b for b, name in compiled.bind_names.items()}  # as named in the SQL
        self.defaults = {name: b.effective_value for name, b in binds.items() if not b.required}
        processors = {name: b.type.dialect_impl(dialect).bind_processor(dialect) for name, b in binds.items()}
        self.processors: dict[str, Callable[[Any], Any]] = {n: p for n, p in processors.items() if p is not None}
        self.row: Any = None
        self.columns: list[Callable[[Any], Any] | None] = []
        """The result processors of a SELECT's columns (None: the driver's value as is)."""
        if isinstance(statement, Select):
            self.row = namedtuple("Row", list(statement.selected_columns.keys()))  # type: ignore[misc]
            self.columns = [c.type.dialect_impl(dialect).result_processor(dialect, None)
                            for c in statement.selected_columns]
        self.processed = any(self.columns)

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What SQLAlchemy would send for `params`."""
        out = {**self.defaults, **params}
        for name, process in self.processors.items():
            if name in out:
                out[name] = process(out[name])
        return out

    def execute(self, cur: DriverCursor, params: Mapping[str, Any]) -> Any:
        sent = self.parameters(params)
        for listener in STATEMENT_LISTENERS:
            listener(self.sql)
        try:
            if self.native is not None:  # the cursor is a RawCursor (same dialect: `DriverCursor`)
                cur.cursor.execute(self.native[0], [sent[name] for name in self.native[1]])
            else:
                cur.cursor.execute(self.sql, sent)
        except self.dialect.loaded_dbapi.Error as e:
            raise cur.failed(self.dialect, self.sql, params, e) from e
        return cur.cursor

    def rows(self, cur: DriverCursor, params: Mapping[str, Any]) -> list[Any]:
        """The rows of a SELECT, each a named tuple with its columns' values as SQLAlchemy reads them."""
        found = self.execute(cur, params).fetchall()
        if self.processed:
            found = [tuple(v if p is None else p(v) for p, v in zip(self.columns, r)) for r in found]
        return [self.row._make(r) for r in found]

    def scalar(self, cur: DriverCursor, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (None when there is none)."""
        r = self.execute(cur, params).fetchone()
        return None if r is None else r[0]


_PLACEHOLDER = re.compile(r"%%|%\((\w+)\)s")


def native_form(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` in the pyformat style (`%(name)s`, `%%`) with `$1`, `$2`... instead, and the names in order."""
    order: list[str] = []

    def place(m: re.Match[str]) -> str:
        name = m.group(1)
        if name is None:
            return "%"
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _PLACEHOLDER.sub(place, sql), tuple(order)


def compiled_for(url: str) -> Callable[[ClauseElement], DriverStatement]:
    """A per-process cache of statements compiled for `url`'s dialect, by statement object
    (the hot path's statements are built once: module constants, or `lru_cache`d by shape)."""
    return functools.partial(_compiled, statement_engine(url).dialect)


@functools.lru_cache(maxsize=512)
def _compiled(dialect: Dialect, statement: ClauseElement) -> DriverStatement:
    return DriverStatement(statement, dialect)


class DriverCursor:
    """A psycopg cursor and the pooled connection it is on."""

    def __init__(self, fairy: Any, dialect: Dialect) -> None:
        self.fairy = fairy
        conn = fairy.driver_connection
        # psycopg 3: a `RawCursor`, for statements with `$n` placeholders (`DriverStatement.native`)
        self.cursor = dialect.loaded_dbapi.RawCursor(conn) if dialect.driver == "psycopg" else conn.cursor()

    def failed(self, dialect: Dialect, sql: str, params: Mapping[str, Any], e: Any) -> exc.StatementError:
        """`e` as SQLAlchemy raises it; a connection the server dropped is dropped from the pool."""
        gone = bool(dialect.is_disconnect(e, self.fairy.dbapi_connection, self.cursor))
        if gone:
            self.fairy.invalidate(e)
        error: exc.StatementError = exc.DBAPIError.instance(sql, dict(params), e, dialect.loaded_dbapi.Error,
                                                            connection_invalidated=gone, dialect=dialect)
        return error


@contextmanager
def driver_cursor(url: str) -> Iterator[DriverCursor]:
    """A cursor of a pooled autocommit connection (`statement_engine`): each statement is atomic by
    itself. The connection goes back to the pool afterwards (or was dropped, `DriverCursor.failed`)."""
    engine = statement_engine(url)
    fairy = engine.raw_connection()
    try:
        cur = DriverCursor(fairy, engine.dialect)
        try:
            yield cur
        finally:
            cur.cursor.close()
    finally:
        fairy.close()
