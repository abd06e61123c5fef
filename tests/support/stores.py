"""The store suite's backends: every store interface is run against each of them.

    @pytest.fixture(params=BACKENDS)
    def store(request, tmp_path): return open_backend(request, tmp_path)

SQLite (a fresh file per test), and PostgreSQL through psycopg 3 (the recommended driver) and
psycopg2 (also supported), on the session's migrated `database` or a module's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from workflows.store import PostgresStore, SagaStore, SQLiteStore, open_store
from workflows.store.db import migrate

BACKENDS = ["sqlite", "postgresql", "psycopg2"]


def open_backend(request: Any, tmp_path: Path, pg_url: str | None = None) -> SagaStore:
    """The store of `request.param`'s backend; PostgreSQL on `pg_url` (default: the session's `database`)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
    else:
        from sqlalchemy.engine import make_url

        url = pg_url or request.getfixturevalue("database")
        if request.param == "psycopg2":
            url = make_url(url).set(drivername="postgresql+psycopg2").difference_update_query(
                ["prepare_threshold"]).render_as_string(hide_password=False)  # psycopg2 never prepares
    store = open_store(url)
    assert isinstance(store, SQLiteStore if request.param == "sqlite" else PostgresStore)
    return store
