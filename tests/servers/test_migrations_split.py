"""The library's migrations make only the saga tables; the example shop makes its own (tasks/schema.py).

Up to 0.1.0 revision 0001 also created the shop's tables. A database migrated then (head 0009, the
shop's tables in it) must upgrade with the new migrations and the example's setup without losing a
row. `tests/servers/fixtures/migrations_0_1_0/` is that release's migrations folder, verbatim
(`git archive 3ee1751 workflows/store/migrations`), so the old state is made as it was made then.
"""
from __future__ import annotations

import itertools
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session

import tasks.sagas  # noqa: F401  (registers order_fulfillment)
from tasks.models import Notification, Payment, Reservation, Shipment, Stock
from tasks.schema import SHOP_TABLES, migrate as migrate_example
from tests.support.databases import drop_pg_database, fresh_pg_database, plain_engine
from workflows import start_saga
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.store.db import MIGRATIONS, alembic_config, migrate

OLD_MIGRATIONS = Path(__file__).resolve().parent / "fixtures" / "migrations_0_1_0"
SAGA_TABLES = {"sagas", "saga_steps", "saga_events", "dead_letters", "processed_events", "event_outbox",
               "saga_signals", "saga_workers", "saga_definitions", "saga_parked_steps"}
"""The saga tables at 0.1.0's head (0009)."""
ADDED_SINCE_0_1_0 = {"credentials", "access_audit", "console_sessions", "projection_outbox", "saga_notifications",
                     "saga_notification_attempts"}
"""Tables of revisions after 0.1.0's head (0009): 0010 (access), 0011 (projections), 0013 (notifications)."""
SAGA_TABLES_NOW = SAGA_TABLES | ADDED_SINCE_0_1_0
"""The saga tables at the newest revision."""
SHOP_TABLES_0_1_0 = SHOP_TABLES - {"shop_counters"}
"""The shop's tables 0.1.0 made (its order-number counter came later, made by the example's setup)."""


def migrate_as_0_1_0(url: str) -> None:
    """What `sagas migrate` (with the example's tables, its default) did at 0.1.0."""
    cfg = Config()
    cfg.set_main_option("script_location", str(OLD_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["saga_example_tables"] = True
    command.upgrade(cfg, "head")


def columns_of(url: str) -> dict[str, list[str]]:
    """Every table but alembic_version, with its columns."""
    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            names = sorted(set(inspect(c).get_table_names()) - {"alembic_version"})
            return {t: [col["name"] for col in inspect(c).get_columns(t)] for t in names}
    finally:
        engine.dispose()


def every_row(url: str, columns: dict[str, list[str]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but alembic_version (of `columns`' tables, those columns: what a
    later migration added is not compared), in a stable order."""
    columns = columns or columns_of(url)
    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            return {t: sorted(tuple(map(repr, row)) for row in c.execute(text(
                        f'SELECT {", ".join(chr(34) + x + chr(34) for x in cols)} FROM "{t}"')))
                    for t, cols in columns.items()}
    finally:
        engine.dispose()


def head_of(url: str) -> str | None:
    engine = plain_engine(url)
    try:
        with engine.connect() as c:
            return c.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def test_a_database_at_0_1_0s_head_upgrades_without_losing_a_row(tmp_path: Path) -> None:
    url = fresh_pg_database("split")
    try:
        # Given a database migrated by 0.1.0, the shop's tables in it, with runs and the shop's rows
        migrate_as_0_1_0(url)
        assert head_of(url) == "0009"
        assert SAGA_TABLES - ADDED_SINCE_0_1_0 | SHOP_TABLES_0_1_0 <= set(inspect(plain_engine(url)).get_table_names())
        counter = itertools.count(1)
        prefix = uuid.uuid4().hex[:16]
        rt = Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path),
                     ids=lambda: f"{prefix}{next(counter):016x}", _dispatcher=RecordingDispatcher())
        order = {"order_id": "order-1", "customer_id": "cust-1", "email": "c@example.com",
                 "items": [{"sku": "SKU-1", "quantity": 2, "price": "12.50"}], "payment": {"card": "4242424242424242"},
                 "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
        with activate(rt):
            saga_ids = [start_saga("order_fulfillment", {**order, "order_id": f"order-{i}"}) for i in range(3)]
        engine = plain_engine(url)
        with Session(engine) as s, s.begin():
            s.add(Stock(sku="SKU-1", available=7))
            s.add(Reservation(idempotency_key=f"{saga_ids[0]}-reserve", saga_id=saga_ids[0],
                              items=order["items"], status="RESERVED", created_at=rt.clock()))
            s.add(Payment(idempotency_key=f"{saga_ids[0]}-pay", saga_id=saga_ids[0], customer_id="cust-1",
                          amount=Decimal("25.00"), status="CHARGED", created_at=rt.clock()))
            s.add(Shipment(idempotency_key=f"{saga_ids[0]}-ship", saga_id=saga_ids[0], tracking_number="T-1",
                           address=order["shipping_address"], status="CREATED", created_at=rt.clock()))
            s.add(Notification(idempotency_key=f"{saga_ids[0]}-mail", saga_id=saga_ids[0], kind="confirmation",
                               recipient="c@example.com", created_at=rt.clock()))
        engine.dispose()
        old_columns = columns_of(url)
        before = every_row(url, old_columns)
        assert all(before[t] for t in ("sagas", "saga_steps", "saga_events",
                                       *sorted(SHOP_TABLES_0_1_0 - {"service_faults"})))

        # When the new library's migrations run, then the example's setup (`python -m tasks.schema`)
        migrate(url)
        migrate_example(url)

        # Then every row of every table is still there, and the schema is at the newest revision
        # (in the columns they had: a column added since, sagas.trace_context, is NULL in each)
        assert every_row(url, old_columns) == before
        assert {"trace_context"} <= set(columns_of(url)["sagas"]) - set(old_columns["sagas"])
        assert every_row(url, {"sagas": ["trace_context"]}) == {"sagas": [("None",)] * len(before["sagas"])}
        assert head_of(url) == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        with Session(plain_engine(url)) as s:
            assert s.scalar(select(Stock.available).where(Stock.sku == "SKU-1")) == 7
    finally:
        drop_pg_database(url)


def test_a_fresh_database_gets_only_the_saga_tables_from_the_library() -> None:
    url = fresh_pg_database("split_fresh")
    try:
        migrate(url)
        assert set(inspect(plain_engine(url)).get_table_names()) == SAGA_TABLES_NOW | {"alembic_version"}
        migrate_example(url)  # the example's setup adds the shop's, and is safe to repeat
        migrate_example(url)
        assert set(inspect(plain_engine(url)).get_table_names()) == SAGA_TABLES_NOW | SHOP_TABLES | {"alembic_version"}
    finally:
        drop_pg_database(url)


def test_the_shipped_migrations_import_nothing_but_the_library() -> None:
    for path in MIGRATIONS.rglob("*.py"):
        source = path.read_text()
        assert "import tasks" not in source and "from tasks" not in source, path
