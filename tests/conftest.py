"""What every tier shares: the test kit's fixtures (`workflows.testing`: saga_runtime, saga_kit,
saga_clock, saga_worker, ...), under the names the tests use (`rt`, `clock`, `worker`), and the
process's saga and step-task registries restored after each test, so no test sees what another
registered or unregistered.

`rt` is the test's runtime on a fresh SQLite file (active while the test runs), `clock` its clock,
`worker` the in-process worker delivering what `rt` recorded. A module changes them by overriding the
kit's fixtures: `saga_settings` (ask for the one it overrides and add to it), `saga_ids`,
`saga_migrate`, `saga_database_url` (e.g. parametrized over SQLite and a PostgreSQL database).

The tiers (tests/README.md): tests/pure (no database, no broker), tests/inprocess (SQLite, the
recording dispatcher, the test clock; no server), tests/servers (PostgreSQL, Redis, RabbitMQ, real
workers; their fixtures are in tests/servers/conftest.py).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # imported by pytest as the plugin below, not here first (its asserts are rewritten then)
    from workflows.runtime.container import Runtime
    from workflows.testing import Clock, Worker

pytest_plugins = ["workflows.testing"]


@pytest.fixture(autouse=True)
def _registries_restored(saga_registries: None) -> Iterator[None]:
    yield


@pytest.fixture
def clock(saga_clock: Clock) -> Clock:
    return saga_clock


@pytest.fixture
def rt(saga_runtime: Runtime) -> Runtime:
    return saga_runtime


@pytest.fixture
def worker(saga_worker: Worker) -> Worker:
    return saga_worker
