"""Names a declaration may use, and the task a step refers to. Pure."""
from __future__ import annotations

import re
from typing import Any, Protocol

from workflows.core.errors import DefinitionError

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")
"""A saga, step, group, wait or signal name."""


class _Required:
    def __repr__(self) -> str:
        return "<required>"


REQUIRED: Any = _Required()


class HasTaskName(Protocol):
    @property
    def name(self) -> str: ...  # read-only: a StepTask (frozen) has it


def task_name(ref: str | HasTaskName, what: str) -> str:
    """The Celery task name a step refers to: a string or anything with `.name`."""
    name = ref if isinstance(ref, str) else getattr(ref, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise DefinitionError(
            f"{what} must be a task name like 'payment.charge' or a @step_task function (got {ref!r})"
        )
    return name
