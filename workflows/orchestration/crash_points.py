"""Test only: named crash points of the step path, for the crash-safety tests.

`SAGA_TEST_CRASH_AFTER_COMMIT=<step>` kills the pool process right after that step's transition
committed, before its follow-up is published; `<step>:worker` kills the whole worker
(tests/servers/test_crash_safety.py, tests/servers/test_children.py). Unset (always, outside those tests), it
does nothing. The step task hands `after_commit` to `DecisionLoop.step`.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

ENV = "SAGA_TEST_CRASH_AFTER_COMMIT"


def after_commit(step: str) -> Callable[[], None]:
    """The crash point after the commit of `step`'s transition."""
    return lambda: crash_after_commit(step)


def crash_after_commit(step: str) -> None:
    target = os.environ.get(ENV)
    if target and target.split(":")[0] == step:
        if target.endswith(":worker"):
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
