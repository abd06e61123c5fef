"""The docs' "Start a saga in your web app's own transaction" section (docs/guide/web-app.md), as written.

- its FastAPI example (the code block, extracted from the page and imported as a module) on SQLite
  and PostgreSQL with a `RecordingDispatcher`, and on PostgreSQL with a real worker;
- its Alembic recipe (the `alembic.ini` and `env.py` blocks) in a throwaway application with a
  revision of its own, driven by the `alembic` commands the page gives;
- `sagas migrate --schema`, and that `sagas migrate` makes the saga tables only.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import tasks.sagas  # noqa: F401  (registers order_fulfillment, the saga the page starts)
from tasks.schema import migrate as migrate_example
from tests.support.databases import drop_pg_database, fresh_pg_database
from workflows import start_saga
from workflows.interfaces.cli import main as sagas_cli
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.store.db import alembic_config, downgrade_all, migrate

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "guide" / "web-app.md"
PG_URL = os.environ.get("TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SAGA_TABLES = {"sagas", "saga_steps", "saga_events", "dead_letters", "processed_events", "event_outbox",
               "saga_signals", "saga_workers", "saga_definitions", "saga_parked_steps",
               "credentials", "access_audit", "console_sessions", "projection_outbox",
               "saga_notifications", "saga_notification_attempts"}
EXAMPLE_TABLES = {"payments", "shipments", "notifications", "inventory_stock", "inventory_reservations",
                  "service_faults"}
ALEMBIC = Path(sys.executable).parent / "alembic"


def section() -> str:
    text_ = PAGE.read_text()
    return text_.split("<!-- section: app-transaction -->", 1)[1].split("<!-- /section: app-transaction -->", 1)[0]


def block(after: str, lang: str) -> str:
    """The first ```lang block of the section after the text `after`."""
    rest = section().split(after, 1)[1]
    found = re.search(rf"```{lang}\n(.*?)```", rest, flags=re.S)
    assert found, f"no {lang} block after {after!r} in {PAGE.relative_to(ROOT)}"
    return found.group(1)


def valid_order(**overrides: Any) -> dict[str, Any]:
    oid = uuid.uuid4().hex[:10]
    order = {"order_id": f"order-{oid}", "customer_id": "cust-1", "email": "c@example.com",
             "items": [{"sku": f"SKU-{oid}", "quantity": 2, "price": "12.50"}],
             "payment": {"card": "4242424242424242"},
             "shipping_address": {"name": "Ada", "street": "1 Main St", "city": "Berlin", "country": "DE"}}
    order.update(overrides)
    return order


def recording_runtime(url: str, tmp_path: Path) -> Runtime:
    counter = itertools.count(1)
    prefix = uuid.uuid4().hex[:16]
    return Runtime(app=None, settings=Settings(database_url=url, data_dir=tmp_path),
                   ids=lambda: f"{prefix}{next(counter):016x}", _dispatcher=RecordingDispatcher())


# ------------------------------------------------------------------ the FastAPI example


def load_checkout(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The page's FastAPI block as a module (`checkout.py`), on the database at `url`."""
    import worker  # noqa: F401  (imported before a test activates its runtime: the block imports it too)

    path = tmp_path / "checkout.py"
    path.write_text(block("### FastAPI", "python"))
    monkeypatch.setenv("SAGA_DATABASE_URL", url)
    name = f"readme_checkout_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.Base.metadata.drop_all(module.engine)
    module.Base.metadata.create_all(module.engine)  # the app's own migrations would
    return module


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    u = f"sqlite:///{tmp_path / 'shop.db'}" if request.param == "sqlite" else PG_URL
    migrate(u)
    return u


@pytest.fixture
def checkout(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ModuleType, Runtime]]:
    module = load_checkout(tmp_path, url, monkeypatch)
    rt = recording_runtime(url, tmp_path)
    rt.store.ping()
    with activate(rt):
        yield module, rt
    module.Base.metadata.drop_all(module.engine)
    module.engine.dispose()


def orders(module: ModuleType) -> list[tuple[str, str]]:
    with module.engine.connect() as c:
        return [(r.id, r.saga_id) for r in c.execute(text("SELECT id, saga_id FROM orders"))]


def test_the_readme_fastapi_example_commits_the_order_and_the_run_together(
        checkout: tuple[ModuleType, Runtime]) -> None:
    module, rt = checkout
    assert isinstance(rt.dispatcher, RecordingDispatcher)
    client = TestClient(module.app)
    order = valid_order()

    r = client.post("/orders", json=order)

    assert r.status_code == 201, r.text
    saga_id = r.json()["saga_id"]
    assert orders(module) == [(order["order_id"], saga_id)]
    view = rt.store.get(saga_id)
    assert view.saga_type == "order_fulfillment" and view.state == "RUNNING"
    assert view.idempotency_key == f"order-{order['order_id']}"
    assert [s.step for s in rt.dispatcher.steps()] == ["reserve_inventory"]

    again = client.post("/orders", json=order)  # the request retried
    assert again.status_code == 201 and again.json()["saga_id"] == saga_id
    assert orders(module) == [(order["order_id"], saga_id)] and len(rt.dispatcher.steps()) == 1


def test_the_readme_fastapi_example_leaves_nothing_when_the_request_fails_before_its_commit(
        checkout: tuple[ModuleType, Runtime]) -> None:
    module, rt = checkout

    def crashing_db() -> Iterator[Session]:  # the page's session, whose commit never happens
        with module.Sessions() as session:
            def crash() -> None:
                raise RuntimeError("the app fails before its commit")
            session.commit = crash  # type: ignore[method-assign]
            yield session

    module.app.dependency_overrides[module.db] = crashing_db
    order = valid_order()
    r = TestClient(module.app, raise_server_exceptions=False).post("/orders", json=order)

    assert r.status_code == 500
    assert orders(module) == []
    assert rt.store.run_for_key(f"order-{order['order_id']}", "order_fulfillment", order) is None
    assert rt.dispatcher.sent == []


def test_the_readme_fastapi_example_with_a_real_worker(database: str, running_worker: Any, order_factory: Any,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL, Redis and a worker: the order committed with its run, the saga runs to the end."""
    from workflows import wait_for

    module = load_checkout(tmp_path, database, monkeypatch)
    try:
        order = order_factory()
        r = TestClient(module.app).post("/orders", json=order)
        assert r.status_code == 201, r.text
        saga_id = r.json()["saga_id"]
        assert orders(module) == [(order["order_id"], saga_id)]
        assert wait_for(saga_id, timeout=60).state == "COMPLETED"
    finally:
        module.Base.metadata.drop_all(module.engine)
        module.engine.dispose()


# ------------------------------------------------------------------ the Alembic recipe


APP_MODELS = '''\
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    saga_id: Mapped[str | None] = mapped_column(String(64))
'''

APP_FIRST_REVISION = '''\
"""orders"""
from alembic import op
import sqlalchemy as sa

revision = "a001"
down_revision = None
branch_labels = ("myapp",)
depends_on = None


def upgrade() -> None:
    op.create_table("orders", sa.Column("id", sa.String(64), primary_key=True), sa.Column("saga_id", sa.String(64)))


def downgrade() -> None:
    op.drop_table("orders")
'''


def build_app(root: Path, url: str) -> dict[str, str]:
    """An application with Alembic migrations of its own, set up as the page says; its environment."""
    (root / "myapp").mkdir(parents=True)
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "models.py").write_text(APP_MODELS)
    (root / "migrations" / "versions").mkdir(parents=True)
    ini = block("**The saga migrations as a branch of yours (Alembic):**", "ini")
    (root / "alembic.ini").write_text(re.sub(r"(?m)^sqlalchemy\.url = .*$", f"sqlalchemy.url = {url}", ini))
    (root / "migrations" / "env.py").write_text(block("and keep autogenerate away", "python"))
    import alembic

    shutil.copy(Path(alembic.__file__).parent / "templates" / "generic" / "script.py.mako", root / "migrations")
    (root / "migrations" / "versions" / "a001_orders.py").write_text(APP_FIRST_REVISION)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}


def alembic_cmd(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ALEMBIC), *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["sqlite", "postgresql"])
def app_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'myapp.db'}"
        return
    u = fresh_pg_database("recipe")
    yield u
    drop_pg_database(u)


def test_the_shipped_revisions_are_the_sagas_branch() -> None:
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert scripts.get_heads() == ["0013"]
    assert scripts.get_revision("sagas@head").revision == "0013"
    chain = [r.revision for r in scripts.walk_revisions("sagas@base", "sagas@head")]
    assert chain == ["0013", "0012", "0011", "0010", "0009", "0008", "0007", "0006", "0005", "0004", "0003", "0002",
                     "0001"]


def test_the_readme_alembic_recipe_includes_the_sagas_branch_in_an_apps_own_migrations(
        app_url: str, tmp_path: Path) -> None:
    root = tmp_path / "app"
    env = build_app(root, app_url)

    heads = alembic_cmd(root, env, "heads")
    assert heads.returncode == 0, heads.stderr
    assert "a001 (myapp) (head)" in heads.stdout and "0013 (sagas) (head)" in heads.stdout

    up = alembic_cmd(root, env, "upgrade", "heads")
    assert up.returncode == 0, up.stderr
    engine = create_engine(app_url)
    tables = set(inspect(engine).get_table_names())
    assert {"orders", "alembic_version"} | SAGA_TABLES <= tables and not tables & EXAMPLE_TABLES

    generated = alembic_cmd(root, env, "revision", "--autogenerate", "-m", "check", "--head", "myapp@head")
    assert generated.returncode == 0, generated.stderr
    [script] = (root / "migrations" / "versions").glob("*_check.py")
    upgrade = script.read_text().split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    assert "drop_table" not in upgrade and "create_table" not in upgrade, upgrade

    # the tables serve a start in the app's own transaction
    rt = recording_runtime(app_url, tmp_path)
    rt.store.ping()
    with activate(rt), Session(engine) as session:
        session.execute(text("INSERT INTO orders (id) VALUES ('o-1')"))
        saga_id = start_saga("order_fulfillment", valid_order(order_id="o-1"), session=session)
        session.execute(text("UPDATE orders SET saga_id = :s WHERE id = 'o-1'"), {"s": saga_id})
        session.commit()
    assert rt.store.get(saga_id).state == "RUNNING"

    # `sagas migrate` on the same schema would share the app's alembic_version, and refuses it
    shared = CliRunner().invoke(sagas_cli, ["migrate", "--url", app_url, "--no-example-tables"])
    assert shared.exit_code != 0

    down = alembic_cmd(root, env, "downgrade", "sagas@base")
    assert down.returncode == 0, down.stderr
    tables = set(inspect(engine).get_table_names())
    assert "orders" in tables and not tables & SAGA_TABLES
    engine.dispose()


# ------------------------------------------------------------------ sagas migrate: --schema, only the saga tables


def test_sagas_migrate_makes_only_the_saga_tables_and_downgrade_leaves_the_apps_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE payments (id INTEGER PRIMARY KEY, note TEXT)"))  # the app's own

    done = CliRunner().invoke(sagas_cli, ["migrate", "--url", url])
    assert done.exit_code == 0, done.output
    tables = set(inspect(engine).get_table_names())
    assert SAGA_TABLES <= tables and tables & EXAMPLE_TABLES == {"payments"}
    # the flag of 0.1.0 is still accepted, and changes nothing
    done = CliRunner().invoke(sagas_cli, ["migrate", "--url", url, "--no-example-tables"])
    assert done.exit_code == 0, done.output
    assert set(inspect(engine).get_table_names()) == tables

    downgrade_all(url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version", "payments"}
    engine.dispose()

    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert CliRunner().invoke(sagas_cli, ["migrate", "--url", fresh]).exit_code == 0
    assert set(inspect(create_engine(fresh)).get_table_names()) == SAGA_TABLES | {"alembic_version"}
    refused = CliRunner().invoke(sagas_cli, ["migrate", "--url", fresh, "--example-tables"])
    assert refused.exit_code == 2 and "python -m tasks.schema" in refused.output

    default = f"sqlite:///{tmp_path / 'example.db'}"
    migrate_example(default)  # this repository's deployment: the example shop's tables too
    assert EXAMPLE_TABLES <= set(inspect(create_engine(default)).get_table_names())


def test_sagas_migrate_schema_puts_the_saga_tables_in_their_own_schema(tmp_path: Path) -> None:
    url = fresh_pg_database("schema")
    try:
        for did in ("migrated from an empty database to", "nothing to apply, already at"):  # safe to repeat
            done = CliRunner().invoke(sagas_cli, ["migrate", "--url", url, "--schema", "sagas"])
            assert done.exit_code == 0, done.output
            assert f"(schema sagas): {did}" in done.output and "schema is at the newest revision" in done.output
        engine = create_engine(url)
        insp = inspect(engine)
        assert set(insp.get_table_names(schema="sagas")) == SAGA_TABLES | {"alembic_version"}
        assert insp.get_table_names(schema="public") == []
        with engine.begin() as c:  # the page's server-side setting
            c.execute(text(f'ALTER DATABASE "{make_url(url).database}" SET search_path = "$user", public, sagas'))
            c.execute(text("CREATE TABLE public.orders (id text PRIMARY KEY, saga_id text)"))
        engine.dispose()

        app_engine = create_engine(url)  # new connections: the search path applies
        rt = recording_runtime(url, tmp_path)
        with activate(rt), Session(app_engine) as session:
            session.execute(text("INSERT INTO orders (id) VALUES ('o-1')"))
            saga_id = start_saga("order_fulfillment", valid_order(order_id="o-1"), session=session)
            session.commit()
        assert isinstance(rt.dispatcher, RecordingDispatcher) and len(rt.dispatcher.steps()) == 1
        with app_engine.connect() as c:
            assert c.scalar(text("SELECT count(*) FROM public.orders")) == 1
            assert c.scalar(text("SELECT state FROM sagas.sagas WHERE id = :i"), {"i": saga_id}) == "RUNNING"
        assert rt.store.get(saga_id).state == "RUNNING"
        app_engine.dispose()
    finally:
        drop_pg_database(url)


def test_sagas_migrate_schema_needs_postgresql(tmp_path: Path) -> None:
    r = CliRunner().invoke(sagas_cli, ["migrate", "--url", f"sqlite:///{tmp_path / 'x.db'}", "--schema", "sagas"])
    assert r.exit_code == 2 and "needs PostgreSQL" in r.output
