"""The SQLite store (the embedded default): `SqlStore` as it is.

SQLite has no data-modifying `WITH`, so every write is one transaction; `workflows.store.db`
gives its connections WAL, a busy timeout and `BEGIN IMMEDIATE`, so writers in several worker
processes queue up instead of failing.
"""
from __future__ import annotations

from workflows.store.sql import SqlStore


class SQLiteStore(SqlStore):
    """The saga tables in one SQLite file."""
