"""The example shop's database: the saga tables (the library's migrations) and the shop's own tables.

    python -m tasks.schema [URL]     # `make migrate`, docker-compose's `migrate`, the demo, the tests

`sagas migrate` creates the saga tables only. The shop's tables (`tasks/models.py`) are the
example's own, created here with `create_all`: it creates the tables that are missing and never
touches one that exists, so a database migrated when revision 0001 still made them keeps them
with every row (tests/servers/test_migrations_split.py).

A fresh shop (no stock row at all) gets its starting stock, `STARTING_STOCK`: the product "123"
the seed walkthrough orders. A shop that has stock already is left as it is.
"""
from __future__ import annotations

import sys

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from tasks.models import ServiceBase, Stock
from workflows.store.db import engine_from_url
from workflows.store.db import migrate as migrate_saga_tables

SHOP_TABLES = frozenset(ServiceBase.metadata.tables)
STARTING_STOCK = {"123": 100}
"""The example shop's stock on a fresh database: the product the seed's walkthrough orders."""


def create_shop_tables(url: str) -> None:
    """Create the shop's tables that are missing; stock a fresh shop with `STARTING_STOCK` (safe to repeat)."""
    engine = engine_from_url(url)  # the URL's driver options too (?prepare_threshold=none behind PgBouncer)
    try:
        ServiceBase.metadata.create_all(engine)
        insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        with engine.begin() as c:
            if c.scalar(select(Stock.sku).limit(1)) is None:  # a fresh shop; two setups at once stock it once
                c.execute(insert(Stock).values([{"sku": sku, "available": qty} for sku, qty in STARTING_STOCK.items()])
                          .on_conflict_do_nothing(index_elements=["sku"]))
    finally:
        engine.dispose()


def drop_shop_tables(url: str) -> None:
    """Drop the shop's tables (tests that start from an empty database)."""
    engine = engine_from_url(url)
    try:
        ServiceBase.metadata.drop_all(engine)
    finally:
        engine.dispose()


def migrate(url: str) -> None:
    """This deployment's whole schema: the saga tables to the newest revision, then the shop's."""
    migrate_saga_tables(url)
    create_shop_tables(url)


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.engine import make_url

    from workflows.runtime.settings import get_settings

    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else get_settings().resolved_database_url()
    migrate(url)
    print(f"{make_url(url).render_as_string(hide_password=True)}: the saga tables at the newest revision, "
          f"the shop's tables created where missing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
