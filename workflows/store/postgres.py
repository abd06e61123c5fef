"""The PostgreSQL store: the hot path's writes as one statement each.

A run's creation and a step's transition are each one data-modifying `WITH` statement on an
autocommit connection: one round trip, atomic by itself, no BEGIN/COMMIT. With psycopg 3 a
statement run 5 times on a connection is prepared there, so the few hot statements are planned
once per connection (see README, benchmark). Those two statements and the run's read (`load`),
run for every step, are compiled once and run on the driver's cursor (`store._driver`), without
SQLAlchemy's per-execution overhead: about a third of the store's CPU per step
(`bench/driver_timing.py`). The rarer statements go through SQLAlchemy; transitions that also
write or resolve dead letters (retries exhausted, operator redrives) or start a child saga use
`SqlStore`'s transaction.
"""
from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, cast, func, insert, literal_column, select, union_all, update
from sqlalchemy.exc import IntegrityError

from workflows.core.errors import ConcurrentTransition
from workflows.core.state import RunState, Transition
from workflows.core.transition import ProjectedRecord
from workflows.store._driver import compiled_for, driver_cursor
from workflows.store.projections import PROJECTION_COLUMNS, PROJECTIONS, projection_values
from workflows.store.records import Created
from workflows.store.db import statement_engine
from workflows.store.rows import (EVENT_COLUMNS, EVENTS, SAGAS, STEP_COLUMNS, STEPS, creation_rows, event_values,
                                  redelivery_event, redelivery_update, step_values)
from workflows.store.sql import KEPT, STATE, SqlStore, run_state


class PostgresStore(SqlStore):
    """`SqlStore` on PostgreSQL, with one-statement creations and transitions."""

    def create_run(self, t: Transition, *, idempotency_key: str | None, now: datetime) -> Created:
        if t.children:  # a first stage that starts a child saga: the runs in one transaction
            return super().create_run(t, idempotency_key=idempotency_key, now=now)
        saga_row, steps, events = creation_rows(t, idempotency_key=idempotency_key, by=t.after.caused_by or "",
                                                now=now)
        try:
            statement, params = creation_statement(saga_row, steps, events, t.projected, now)
            with driver_cursor(self.url) as cur:
                compiled_for(self.url)(statement).execute(cur, params)
        except IntegrityError as e:
            return self._taken(t, idempotency_key, e)
        return Created(t.after.saga_id, True)

    def _insert_creation(self, conn: Connection, saga_row: dict[str, Any], steps: list[dict[str, Any]],
                         events: list[dict[str, Any]]) -> None:
        """The run's rows on the caller's connection (`create_run_in`): the same one statement."""
        conn.execute(*creation_statement(saga_row, steps, events))

    def commit(self, t: Transition, *, by: str, now: datetime) -> None:
        if t.dead_letters or t.closures or t.signals or t.consumed or t.children:  # rare: a transaction of SqlStore's
            super().commit(t, by=by, now=now)
            return
        statement, params = transition_statement(t, by, now)
        with driver_cursor(self.url) as cur:
            if compiled_for(self.url)(statement).scalar(cur, params) != 1:
                raise ConcurrentTransition(f"saga {t.after.saga_id} changed under us")

    def load(self, saga_id: str) -> RunState:
        """`SqlStore.load`'s statements on the driver's cursor."""
        statement = compiled_for(self.url)
        with driver_cursor(self.url) as cur:
            rows = statement(STATE).rows(cur, {"saga_id": saga_id})
            kept = statement(KEPT).rows(cur, {"saga_id": saga_id}) if rows and rows[0].signals_pending else []
        return run_state(saga_id, rows, kept)

    def count_redelivery(self, saga_id: str, step: str, kind: str, task_id: str, attempt: int, *,
                         by: str, now: datetime, first: bool = False) -> int | None:
        """One statement: `WITH counted AS (UPDATE saga_steps ... RETURNING n), history AS (INSERT
        INTO saga_events ... SELECT ... FROM counted) SELECT n FROM counted` (the same writes as
        `SqlStore.count_redelivery`'s transaction)."""
        _, params = redelivery_update(saga_id, step, kind, task_id, attempt, first)
        row = redelivery_event(saga_id, step, kind, task_id, attempt, 0, by, now)
        params.update({f"h_{c}": row[c] for c in ("at", "type", "step", "attempt")})
        params["h_detail"] = {k: v for k, v in row["detail"].items() if k != "redeliveries"}
        with statement_engine(self.url).connect() as c:  # rare (a lost worker): SQLAlchemy's own execution
            n = c.execute(_redelivery_statement(kind, first), params).scalar()
        return None if n is None else int(n)


@functools.lru_cache(maxsize=4)
def _redelivery_statement(kind: str, first: bool) -> Any:
    statement, _ = redelivery_update("", "", kind, "", 1, first)
    counted = statement.returning(STEPS.c.saga_id).cte("counted")
    n = counted.c[0]
    detail = func.jsonb_set(cast(bindparam("h_detail", type_=EVENTS.c.detail.type), EVENTS.c.detail.type),
                            literal_column("'{redeliveries}'"), func.to_jsonb(n))
    history = insert(EVENTS).from_select(
        ["saga_id", "at", "type", "step", "attempt", "detail"],
        select(counted.c.saga_id, cast(bindparam("h_at", type_=EVENTS.c.at.type), EVENTS.c.at.type),
               bindparam("h_type", type_=EVENTS.c.type.type), bindparam("h_step", type_=EVENTS.c.step.type),
               bindparam("h_attempt", type_=EVENTS.c.attempt.type), detail)).cte("history")
    return select(n).add_cte(history)


def transition_statement(t: Transition, by: str, now: datetime) -> tuple[Any, dict[str, Any]]:
    """Transition `t` as one PostgreSQL statement and its parameters; it returns 1 if written, 0
    if the run is no longer at `t.before.version`. The same writes as `SqlStore._write` (a test compares them):

        WITH bump AS (UPDATE sagas SET version = version + 1, ... WHERE id = :id AND version = :v
                      RETURNING id),
             step_1 AS (UPDATE saga_steps SET ... FROM bump WHERE saga_id = bump.id AND index = 1 ...),
             history AS (INSERT INTO saga_events (...) SELECT bump.id, ... FROM bump UNION ALL ...)
        SELECT count(*) FROM bump

    Every part reads `bump`, so nothing is written unless the version matched.
    """
    before, after = t.before, t.after
    params: dict[str, Any] = {"t_id": after.saga_id, "t_version": before.version, "t_state": after.status.value,
                              "t_failure_reason": after.failure_reason, "t_deadline_at": after.deadline_at,
                              "t_caused_by": by, "t_updated_at": now, "t_signals_pending": len(after.signals),
                              "t_saga_version": after.saga_version}
    traced = after.trace != before.trace  # a trace segment begins: the column is written only then
    if traced:
        params["t_trace_context"] = after.trace
    shape = []
    for old, st in zip(before.steps, after.steps):
        if st != old:
            values = step_values(after.saga_id, st, old, now)
            shape.append((st.index, tuple(c for c in STEP_COLUMNS if c in values)))
            params.update({f"s{st.index}_{c}": values[c] for c in STEP_COLUMNS if c in values})
    for k, row in enumerate(event_values(after.saga_id, t.events, by, now)):
        params.update({f"e{k}_{c}": row[c] for c in EVENT_COLUMNS})
    params.update(_projection_params(t.projected, now))
    return _transition_shape(tuple(shape), len(t.events), len(t.projected), traced), params


@functools.lru_cache(maxsize=256)
def _transition_shape(steps: tuple[tuple[int, tuple[str, ...]], ...], n_events: int, n_projected: int = 0,
                      traced: bool = False) -> Any:
    """The statement for one shape of transition (which steps change which columns, how many
    events), built and compiled once: only its parameters differ from one saga to the next."""
    bump = (update(SAGAS).where(SAGAS.c.id == bindparam("t_id"), SAGAS.c.version == bindparam("t_version"))
            .values(version=SAGAS.c.version + 1, state=bindparam("t_state"),
                    failure_reason=bindparam("t_failure_reason"), deadline_at=bindparam("t_deadline_at"),
                    caused_by=bindparam("t_caused_by"), updated_at=bindparam("t_updated_at"),
                    signals_pending=bindparam("t_signals_pending"), saga_version=bindparam("t_saga_version"),
                    **({"trace_context": bindparam("t_trace_context")} if traced else {}))
            .returning(SAGAS.c.id).cte("bump"))
    parts = [update(STEPS).where(STEPS.c.saga_id == bump.c.id, STEPS.c.index == index)
             .values({c: bindparam(f"s{index}_{c}") for c in columns})
             .returning(STEPS.c.index).cte(f"step_{index}") for index, columns in steps]
    if n_events:
        parts.append(_insert_rows(bump, EVENTS, "e", EVENT_COLUMNS, n_events).cte("history"))
    if n_projected:
        parts.append(_insert_projected(bump, n_projected).cte("projected"))
    return select(func.count()).select_from(bump).add_cte(*parts)


_SAGA_COLUMNS = ("id", "saga_type", "style", "state", "version", "saga_version", "input", "input_hash",
                 "idempotency_key", "caused_by", "created_at", "updated_at", "deadline_at", "signals_pending",
                 "parent_id", "parent_step")
_STEP_INSERT_COLUMNS = ("index", "name", *STEP_COLUMNS)


def creation_statement(saga_row: dict[str, Any], steps: list[dict[str, Any]], events: list[dict[str, Any]],
                       projected: tuple[ProjectedRecord, ...] = (),
                       now: datetime | None = None) -> tuple[Any, dict[str, Any]]:
    """A new run, its steps and its history as one PostgreSQL statement and its parameters (the
    same rows `create_run` inserts in a transaction on SQLite; a test compares them):

        WITH run AS (INSERT INTO sagas (...) VALUES (...) RETURNING id),
             steps AS (INSERT INTO saga_steps (...) SELECT run.id, ... FROM run UNION ALL ...),
             history AS (INSERT INTO saga_events (...) SELECT run.id, ... FROM run UNION ALL ...)
        SELECT count(*) FROM run

    A taken id or idempotency key fails the whole statement (IntegrityError), writing nothing.
    """
    columns = (*_SAGA_COLUMNS, "trace_context") if "trace_context" in saga_row else _SAGA_COLUMNS
    params = {f"r_{c}": saga_row[c] for c in columns}
    for k, row in enumerate(steps):
        params.update({f"s{k}_{c}": row[c] for c in _STEP_INSERT_COLUMNS})
    for k, row in enumerate(events):
        params.update({f"e{k}_{c}": row[c] for c in EVENT_COLUMNS})
    params.update(_projection_params(projected, now or saga_row["created_at"]))
    return _creation_shape(len(steps), len(events), len(projected), columns), params


@functools.lru_cache(maxsize=64)
def _creation_shape(n_steps: int, n_events: int, n_projected: int = 0,
                    columns: tuple[str, ...] = _SAGA_COLUMNS) -> Any:
    run = (insert(SAGAS).values({c: bindparam(f"r_{c}", type_=SAGAS.c[c].type) for c in columns})
           .returning(SAGAS.c.id).cte("run"))
    parts = [_insert_rows(run, STEPS, "s", _STEP_INSERT_COLUMNS, n_steps).cte("steps"),
             _insert_rows(run, EVENTS, "e", EVENT_COLUMNS, n_events).cte("history")]
    if n_projected:
        parts.append(_insert_projected(run, n_projected).cte("projected"))
    return select(func.count()).select_from(run).add_cte(*parts)


def _projection_params(projected: tuple[ProjectedRecord, ...], now: datetime) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for k, row in enumerate(projection_values(projected, now)):
        params.update({f"p{k}_{c}": row[c] for c in (*PROJECTION_COLUMNS, "saga_id")})
    return params


def _insert_projected(parent: Any, n: int) -> Any:
    """INSERT INTO projection_outbox SELECT :p<k>_id, ... FROM parent: n pending records (each with
    its own saga id: a child run's are its own), written only if `parent` wrote its row."""
    columns = (*PROJECTION_COLUMNS, "saga_id")
    rows = [select(*(cast(bindparam(f"p{k}_{c}", type_=PROJECTIONS.c[c].type), PROJECTIONS.c[c].type)
                     for c in columns)).select_from(parent) for k in range(n)]
    return insert(PROJECTIONS).from_select(list(columns), rows[0] if n == 1 else union_all(*rows))


def _insert_rows(parent: Any, table: Any, prefix: str, columns: tuple[str, ...], n: int) -> Any:
    """INSERT INTO table (saga_id, columns) SELECT parent.id, :<prefix><k>_<column>... FROM parent,
    n rows: written only if `parent` (a data-modifying CTE) wrote its row. Each value is cast to
    its column's type (a UNION of untyped values is text)."""
    rows = [select(parent.c.id, *(cast(bindparam(f"{prefix}{k}_{c}", type_=table.c[c].type), table.c[c].type)
                                  for c in columns)) for k in range(n)]
    return (insert(table).from_select(["saga_id", *columns], rows[0] if n == 1 else union_all(*rows))
            .returning(table.c.saga_id))
