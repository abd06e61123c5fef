"""The test kit: a team's sagas run in-process, on SQLite, with a virtual clock and no servers.

A pytest plugin, enabled by the project (never automatically): in the top-level conftest.py

    pytest_plugins = ["workflows.testing"]

or `pytest -p workflows.testing`. Then a test takes the `saga_kit` fixture (`SagaKit`): start a
saga, make a step fail (`fail`, `time_out`), send a signal, move the clock (`advance`, `settle`), and
assert the outcome (`state`, `history`) and the compensations (`compensations`, `compensated`).
The team's real step functions run; faults are injected around them, their modules untouched.

The pieces are usable without the fixtures: `Clock`, `Worker` (delivers what a
`RecordingDispatcher` recorded), `in_process_runtime`, `registries_restored`.
"""
from __future__ import annotations

from workflows._extras import require

require("testing", "workflows.testing", "pytest")

from workflows.testing.clock import Clock  # noqa: E402
from workflows.testing.faults import Call, Fault, Faults, InjectedFault, InjectedPermanentFault  # noqa: E402
from workflows.testing.kit import SagaKit  # noqa: E402
from workflows.testing.plugin import (saga_clock, saga_database_url, saga_ids, saga_kit, saga_migrate,  # noqa: E402
                                      saga_projections, saga_registries, saga_runtime, saga_settings,
                                      saga_templates, saga_tracing, saga_worker)
from workflows.testing.runtime import (in_process_runtime, registries_restored, sequential_ids,  # noqa: E402
                                       sqlite_database)
from workflows.testing.worker import NotSettled, Worker  # noqa: E402

__all__ = ["Call", "Clock", "Fault", "Faults", "InjectedFault", "InjectedPermanentFault", "NotSettled", "SagaKit",
           "Worker", "in_process_runtime", "registries_restored", "saga_clock", "saga_database_url", "saga_ids",
           "saga_kit", "saga_migrate", "saga_projections", "saga_registries", "saga_runtime", "saga_settings",
           "saga_templates", "saga_tracing", "saga_worker", "sequential_ids", "sqlite_database"]
