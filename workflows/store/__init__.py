"""The saga store: the only code that touches the saga tables' sessions and models.

    store = open_store("postgresql+psycopg://…")   # or "sqlite:///…": the implementation follows the URL

`SagaStore` (in `base`) is the interface; `SQLiteStore` and `PostgresStore` implement it and pass
one contract suite. Private modules: `sql` (the transactional implementation), `postgres` (its
one-statement hot path), `reads`, `rows`, `models`, `db` (engines, migrations).
"""
from __future__ import annotations

from workflows.store.base import Created, SagaStore, input_hash
from workflows.store.postgres import PostgresStore
from workflows.store.sqlite import SQLiteStore


def open_store(url: str) -> SagaStore:
    """The store implementation for `url`'s database."""
    if url.startswith("sqlite"):
        return SQLiteStore(url)
    if url.startswith("postgresql"):
        return PostgresStore(url)
    raise ValueError(f"no saga store for database URL {url.split(':', 1)[0]!r}: use sqlite:///<file> or "
                     "postgresql+psycopg://<user>@<host>/<db>")


__all__ = ["Created", "PostgresStore", "SQLiteStore", "SagaStore", "input_hash", "open_store"]
