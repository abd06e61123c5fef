"""The pytest plugin's fixtures (enable it with `pytest_plugins = ["workflows.testing"]` in the
top-level conftest.py, or `pytest -p workflows.testing`).

    saga_kit        a `SagaKit` on a fresh SQLite file: start, fail, signal, advance, assert
    saga_runtime    that runtime, active for the test (`get_runtime()` is it)
    saga_worker     the in-process `Worker` delivering its messages
    saga_clock      the test's `Clock`

Overridable by a project's conftest.py: `saga_migrate` (how the database gets its schema: the saga
tables by default; a project with tables of its own returns its migration), `saga_settings`
(`Settings` fields, e.g. `{"inline_steps": False}`), `saga_ids` (where run ids come from),
`saga_database_url` (the database itself), `saga_projections` (the after-commit projections, e.g.
a sink of your own to assert on) and `saga_tracing` (a tracer, e.g. OpenTelemetry exporting to
memory). Every test that uses the runtime has the saga and step-task registries restored after
it (`saga_registries`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from workflows.core.state import IdSource
from workflows.projections.base import Projections
from workflows.runtime.container import Runtime, activate
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.tracing import Tracing
from workflows.store.db import migrate
from workflows.testing.clock import Clock
from workflows.testing.kit import SagaKit
from workflows.testing.runtime import in_process_runtime, registries_restored, sequential_ids, sqlite_database
from workflows.testing.worker import Worker


@pytest.fixture
def saga_registries() -> Iterator[None]:
    """The saga and step-task registries restored after the test (what it registered is gone)."""
    with registries_restored():
        yield


@pytest.fixture
def saga_clock() -> Clock:
    return Clock()


@pytest.fixture
def saga_migrate() -> Callable[[str], None]:
    """How the test's database gets its schema: the saga tables. Override it to return your
    project's migration (which makes the saga tables and your own)."""
    return migrate


@pytest.fixture(scope="session")
def saga_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[Callable[[str], None], Path]:
    """A migrated SQLite file per migration, made once a session and copied for each test."""
    return {}


@pytest.fixture
def saga_database_url(tmp_path: Path, saga_migrate: Callable[[str], None],
                      saga_templates: dict[Callable[[str], None], Path],
                      tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh SQLite file for the test with the schema `saga_migrate` makes (made once a session,
    copied for each test)."""
    template = saga_templates.get(saga_migrate)
    if template is None:
        template = saga_templates[saga_migrate] = tmp_path_factory.mktemp("saga-schema") / "template.db"
    return sqlite_database(tmp_path, saga_migrate, template=template)


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    """`Settings` fields of the test's runtime (besides its database): none by default."""
    return {}


@pytest.fixture
def saga_ids() -> IdSource:
    """Run ids 1, 2, 3, ... as 32 hex digits."""
    return sequential_ids()


@pytest.fixture
def saga_projections() -> Projections | None:
    """The runtime's after-commit projections: None (what the settings configure) by default.
    Override it to return `Projections([...])` with a sink of the test's own."""
    return None


@pytest.fixture
def saga_tracing() -> Tracing | None:
    """The runtime's tracing: None (what the settings configure) by default. Override it to return
    e.g. `workflows.runtime.otel.OtelTracing` on a tracer provider exporting to memory."""
    return None


@pytest.fixture
def saga_runtime(saga_database_url: str, tmp_path: Path, saga_clock: Clock, saga_ids: IdSource,
                 saga_settings: dict[str, Any], saga_registries: None, saga_projections: Projections | None,
                 saga_tracing: Tracing | None) -> Iterator[Runtime]:
    """The runtime of the test, active while it runs: no broker, its messages recorded."""
    rt = in_process_runtime(saga_database_url, tmp_path, clock=saga_clock, ids=saga_ids,
                            projections=saga_projections, tracing=saga_tracing, **saga_settings)
    with activate(rt):
        yield rt
    rt.projections.close()


@pytest.fixture
def saga_worker(saga_runtime: Runtime) -> Worker:
    dispatcher = saga_runtime.dispatcher
    assert isinstance(dispatcher, RecordingDispatcher)
    return Worker(saga_runtime, dispatcher)


@pytest.fixture
def saga_kit(saga_runtime: Runtime, saga_worker: Worker, saga_clock: Clock) -> SagaKit:
    return SagaKit(saga_runtime, saga_worker, saga_clock)
