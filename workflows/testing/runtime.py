"""The in-process runtime a test runs sagas on: a SQLite file, a recording dispatcher, the test's
clock, ids in sequence; and the process registries restored after a test that changed them."""
from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from workflows.core.registry import SagaRegistry, registry
from workflows.core.state import IdSource
from workflows.core.steps import StepTaskRegistry, step_tasks
from workflows.projections.base import Projections
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import RecordingDispatcher
from workflows.runtime.settings import Settings
from workflows.runtime.tracing import Tracing
from workflows.store.db import migrate


def sqlite_database(folder: Path, migrate_with: Callable[[str], None] = migrate, name: str = "sagas.db", *,
                    template: Path | None = None) -> str:
    """A SQLite file in `folder` with the schema `migrate_with(url)` makes (the saga tables by
    default; a project with tables of its own passes its migration, which makes both). Its URL.

    With `template` (a file path), the schema is made there once and copied for each later call:
    a fresh database per test without running the migrations per test."""
    path = folder / name
    if template is None:
        migrate_with(f"sqlite:///{path}")
        return f"sqlite:///{path}"
    if not template.exists():
        migrate_with(f"sqlite:///{template}")
    with closing(sqlite3.connect(template)) as src, closing(sqlite3.connect(path)) as dst:
        src.backup(dst)  # a consistent copy, whatever journal mode the migration left
    return f"sqlite:///{path}"


def sequential_ids(width: int = 32) -> IdSource:
    """Ids 1, 2, 3, ... as `width` hex digits: a test's saga ids are the same on every run."""
    counter = itertools.count(1)
    return lambda: f"{next(counter):0{width}x}"


def in_process_runtime(database_url: str, folder: Path, *, clock: Callable[[], datetime],
                       ids: IdSource | None = None, projections: Projections | None = None,
                       tracing: Tracing | None = None, **settings: Any) -> Runtime:
    """A runtime with no broker: what it would publish is recorded (`RecordingDispatcher`) for the
    in-process `Worker` to deliver. `settings`: `Settings` fields (e.g. `inline_steps=False`).
    `projections` and `tracing`, when given, replace what the settings would configure (a test's own
    sink, a tracer exporting to memory)."""
    dispatcher = RecordingDispatcher() if tracing is None else RecordingDispatcher(tracing=tracing)
    return Runtime(app=None, settings=Settings(database_url=database_url, data_dir=folder, **settings),
                   clock=clock, ids=ids or sequential_ids(), _dispatcher=dispatcher,
                   _projections=projections, _tracing=tracing)


@contextmanager
def registries_restored(sagas: SagaRegistry = registry, tasks: StepTaskRegistry = step_tasks) -> Iterator[None]:
    """The saga and step-task registries as they were before the block, after it: what a test
    registers or unregisters does not leak into the next test."""
    saved_sagas, saved_tasks = sagas.snapshot(), tasks.snapshot()
    try:
        yield
    finally:
        sagas.restore(saved_sagas)
        tasks.restore(saved_tasks)
