"""The in-process tier: SQLite, the recording dispatcher, the test clock; no server. Its fixtures are
the test kit's (`rt`, `clock`, `worker` in tests/conftest.py); here, the tier's settings and the
shared step functions' record, fresh for each test.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import inproc_steps


@pytest.fixture
def saga_settings() -> dict[str, Any]:
    """The tier's settings, whatever the environment says: a lost message is declared lost 1 s
    after its step's time limit (as the servers tier's SAGA_DISPATCH_GRACE)."""
    return {"dispatch_grace": 1.0}


@pytest.fixture(autouse=True)
def _fresh_step_calls() -> Iterator[None]:
    """The shared in-process step functions' record (`tests.support.inproc_steps`) starts empty."""
    inproc_steps.calls.clear()
    inproc_steps.switched_off.clear()
    yield
