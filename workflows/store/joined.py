"""Writing in the caller's transaction: a run, or a choreography's first event, on the web app's
own SQLAlchemy `Session` or `Connection`, and what to do once that transaction committed.

    conn = join(tx, store_url)                  # the caller's connection, in a transaction
    store.create_run_in(tx, t, idempotency_key=key, now=now)     # in a SAVEPOINT of it
    store.after_commit(tx, publish, check=run_exists)            # once its outermost COMMIT is done

The rows are the same as `create_run`'s (`rows.creation_rows`) and go in a SAVEPOINT: a taken
idempotency key or id rolls back to it, and the caller's transaction stays usable (on PostgreSQL a
failed statement would otherwise abort the whole transaction). Nothing is published from inside
the transaction: `after_commit` runs its actions once the caller's outermost transaction has
committed, and drops them if it rolls back or ends otherwise.

- A `Session`: its `after_commit` event (fired after the COMMIT; also after a savepoint's release,
  which is told apart and skipped) and `after_transaction_end` (a root transaction that ends without
  its `after_commit`: rolled back or closed, the actions are dropped). One pair of listeners per
  session, registered at its first use and left in place, inert once nothing is pending: an event
  listener cannot be removed while its own event is being dispatched, and a later commit of the
  same session finds nothing to run.
- A `Connection`: SQLAlchemy has no event after a connection's COMMIT (its `commit` event fires
  before the DBAPI commit). The `commit` listener therefore performs the DBAPI commit itself, then
  runs the actions; SQLAlchemy's own commit that follows finds no transaction open and does
  nothing. The `rollback` listener drops the actions (a connection closed without committing
  rolls back, and fires it).

Actions run after the data is durable and never raise into the caller's `commit()`: an error is
logged (a lost first step is re-sent by the sweeper once its deadline passes; an unsent outbox
row by the outbox relay). An action registered inside a SAVEPOINT of the caller's may have been
rolled back with that savepoint while the outer transaction committed: its `check` (does the run
exist?) runs first.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from workflows.core.errors import SagaError, SagaIdTaken
from workflows.core.state import Transition
from workflows.store.projections import PROJECTIONS, projection_values
from workflows.store.reads import run_for_key, saga_type_of
from workflows.store.records import CallerTx, Created
from workflows.store.rows import EVENTS, SAGAS, STEPS, child_creations, creation_rows

if TYPE_CHECKING:
    from workflows.store.events import EventUnit

log = logging.getLogger("workflows.store")

# ------------------------------------------------------------------ joining the caller's transaction

def join(tx: CallerTx, store_url: str) -> Connection:
    """The connection of `tx`, in a transaction (begun if none is: SQLAlchemy's autobegin), after
    checking it can hold the run: the saga store's database, not in autocommit."""
    if isinstance(tx, Session):
        conn = tx.connection()  # autobegins the session's transaction
    elif isinstance(tx, Connection):
        conn = tx
        if not conn.in_transaction():
            conn.begin()
    else:
        raise SagaError(f"expected a sqlalchemy Session or Connection, got {type(tx).__name__}")
    if not same_database(conn.engine.url.render_as_string(hide_password=False), store_url):
        raise SagaError(
            f"the caller's connection is to {conn.engine.url.render_as_string(hide_password=True)}, the saga store "
            f"is {make_url(store_url).render_as_string(hide_password=True)}: a run started in the caller's "
            "transaction must be written where the workers read it (SAGA_DATABASE_URL)")
    if _autocommit(conn):
        raise SagaError("the caller's connection is in autocommit: there is no transaction to start the saga in")
    if conn.dialect.name == "sqlite":
        _sqlite_begin(conn)
    return conn


def same_database(a: str, b: str) -> bool:
    """Do URLs `a` and `b` name the same database (the driver, host and credentials aside: a
    pooler or another host name may lead to the same server)?"""
    ua, ub = make_url(a), make_url(b)
    if ua.get_backend_name() != ub.get_backend_name():
        return False
    if ua.get_backend_name() == "sqlite":
        return _sqlite_path(ua.database) == _sqlite_path(ub.database)
    return (ua.database or "") == (ub.database or "")


def _sqlite_path(database: str | None) -> str:
    if not database or database == ":memory:":
        return database or ""
    return os.path.realpath(database)


def _autocommit(conn: Connection) -> bool:
    check = getattr(conn, "_is_autocommit_isolation", None)  # SQLAlchemy's own test, no round trip
    return bool(check()) if callable(check) else False


def _sqlite_begin(conn: Connection) -> None:
    """pysqlite (in its default mode) emits BEGIN only before an INSERT/UPDATE/DELETE: a SAVEPOINT
    first in a transaction would begin none, and its RELEASE would commit the run at once, before
    the caller's COMMIT or ROLLBACK. Emit the BEGIN it would have."""
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and getattr(dbapi, "in_transaction", True) is False:
        conn.exec_driver_sql("BEGIN")


# ------------------------------------------------------------------ after the caller's commit

@dataclass
class _Pending:
    action: Callable[[], object]
    check: Callable[[], bool] | None
    """Run first; the action runs only if it returns True (registered inside a caller's savepoint)."""


_connection_pending: weakref.WeakKeyDictionary[Connection, list[_Pending]] = weakref.WeakKeyDictionary()


def after_commit(tx: CallerTx, action: Callable[[], object], *, check: Callable[[], bool] | None = None) -> None:
    """Run `action` once, right after the outermost transaction of `tx` now in progress commits;
    never if it rolls back. `check` matters only when `tx` is inside a SAVEPOINT now: it runs first
    after the commit, and `action` only if it says the writes survived.

    A Session waits on its connection's COMMIT, not on its own `after_commit` event: a session
    joined to a connection whose transaction the caller began fires that event on `commit()`
    while the database has committed nothing yet."""
    if isinstance(tx, Session):
        if tx.get_transaction() is None:
            raise SagaError("the session has no transaction in progress")
        tx = tx.connection()
    if not tx.in_transaction():
        raise SagaError("the connection has no transaction in progress")
    pending = _connection_pending.get(tx)
    if pending is None:
        pending = _connection_pending[tx] = []
        event.listen(tx, "commit", _connection_committing)
        event.listen(tx, "rollback", _connection_rolled_back)
    pending.append(_Pending(action, check if tx.in_nested_transaction() else None))


def _connection_committing(conn: Connection) -> None:
    pending = _connection_pending.get(conn)
    if not pending:
        return
    due, pending[:] = list(pending), []
    try:
        conn.dialect.do_commit(conn.connection)  # the COMMIT, now: what follows must come after it
    except Exception as e:
        dbapi = conn.dialect.loaded_dbapi
        if dbapi is not None and isinstance(e, dbapi.Error):
            raise DBAPIError.instance(None, None, e, dbapi.Error, dialect=conn.dialect) from e
        raise
    _run(due)


def _connection_rolled_back(conn: Connection) -> None:
    pending = _connection_pending.get(conn)
    if pending:
        pending.clear()


def _run(due: list[_Pending]) -> None:
    for p in due:
        try:
            if p.check is None or p.check():
                p.action()
        except Exception:  # committed already: never fail the caller's commit()
            log.exception("the caller's transaction committed; an action after its commit failed (the sweeper "
                          "or the outbox relay sends what it did not)")


# ------------------------------------------------------------------ the store's part

class JoinedStore:
    """Mixed into `SqlStore`: starts written in the caller's transaction."""

    url: str

    def join(self, tx: CallerTx) -> Connection:
        return join(tx, self.url)

    def create_run_in(self, tx: CallerTx, t: Transition, *, idempotency_key: str | None,
                      now: datetime) -> Created:
        """`create_run` on the caller's transaction `tx`, in a SAVEPOINT of it: the rows commit or
        roll back with the caller's. A used idempotency key returns its run (`created` False) or
        raises `IdempotencyConflict`, a taken id raises `SagaIdTaken`; either way the savepoint is
        rolled back and `tx` stays usable."""
        conn = self.join(tx)
        saga_row, steps, events = creation_rows(t, idempotency_key=idempotency_key, by=t.after.caused_by or "",
                                                now=now)
        try:
            with conn.begin_nested():
                self._insert_creation(conn, saga_row, steps, events)
                for child_rows in child_creations(t, now):  # a first stage that starts a child saga
                    self._insert_creation(conn, *child_rows)
                if t.projected:
                    conn.execute(insert(PROJECTIONS), projection_values(t.projected, now))
        except IntegrityError as e:
            error = e
        else:
            return Created(t.after.saga_id, True)
        run = t.after
        existing = None if idempotency_key is None else self.run_for_key_in(tx, idempotency_key, run.saga_type,
                                                                            run.input)
        if existing is not None:
            return Created(existing, False)
        if conn.scalar(select(SAGAS.c.id).where(SAGAS.c.id == run.saga_id)) is not None:
            raise SagaIdTaken(f"a saga with id {run.saga_id!r} exists already; choose another id") from error
        raise error

    def _insert_creation(self, conn: Connection, saga_row: dict[str, Any], steps: list[dict[str, Any]],
                         events: list[dict[str, Any]]) -> None:
        """The run's rows on `conn` (PostgreSQL: one statement, `PostgresStore`)."""
        conn.execute(insert(SAGAS), saga_row)
        conn.execute(insert(STEPS), steps)
        conn.execute(insert(EVENTS), events)

    def run_for_key_in(self, tx: CallerTx, idempotency_key: str, saga_type: str, data: dict[str, Any]) -> str | None:
        """`run_for_key` as the caller's transaction sees it (its own uncommitted runs included)."""
        return run_for_key(self.join(tx), idempotency_key, saga_type, data)

    def saga_type_in(self, tx: CallerTx, saga_id: str) -> str | None:
        """`saga_type` as the caller's transaction sees it (on SQLite the store's own connection
        would queue behind the caller's write lock)."""
        return saga_type_of(self.join(tx), saga_id)

    @contextmanager
    def event_unit_in(self, tx: CallerTx) -> Iterator[EventUnit]:
        """`event_unit` in a SAVEPOINT of the caller's transaction: leaving the block releases it
        (the writes commit with the caller's), an exception rolls back to it and leaves `tx`
        usable. The unit has its own session on the caller's connection: nothing is added to a
        caller's session."""
        from workflows.store.events import EventUnit

        conn = self.join(tx)
        with Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False) as s:
            with s.begin():
                yield EventUnit(s)

    def after_commit(self, tx: CallerTx, action: Callable[[], object], *,
                     check: Callable[[], bool] | None = None) -> None:
        after_commit(tx, action, check=check)
