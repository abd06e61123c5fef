"""Optional dependencies: the extras of the wheel, and a clear error when one is missing.

`pip install celery-sagas` brings what a worker, the client and the `sagas` CLI need. The rest is
picked by extra: `postgres` (psycopg 3) or `psycopg2`, `api` (the HTTP API, the console, /metrics),
`flower`, `testing`. A module that needs an extra says so when it is imported without it.
"""
from __future__ import annotations

import importlib.util

DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "psycopg2"}
"""The PostgreSQL driver modules and the extra that installs each."""


class MissingExtra(ModuleNotFoundError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def missing_extra(extra: str, module: str, needed_by: str) -> MissingExtra:
    return MissingExtra(f"{needed_by} needs the module {module!r}, which is not installed: "
                        f"pip install 'celery-sagas[{extra}]'", name=module)


def require(extra: str, needed_by: str, *modules: str) -> None:
    """Raise `MissingExtra` naming `extra` unless every one of `modules` can be imported."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise missing_extra(extra, module, needed_by)
