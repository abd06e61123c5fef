"""Flower's view of inline steps: the task events a worker sends for a message it runs.

An inline step (`orchestration.inline`) is not a message the worker received, so Celery sends no
task events for it. With task events on, `announced` sends `task-received`, `task-started` and
`task-succeeded` (or `task-failed`) under the step's own task id, its saga id first in its
arguments, as for a published step. Events are for watching: a failure to send one is logged,
never fails a step.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workflows.core.state import Command
from workflows.runtime.container import Runtime
from workflows.runtime.dispatch import short_repr

log = logging.getLogger("workflows.orchestration")

_EVENTS: dict[int, Any] = {}
"""This process's event dispatcher for inline steps, by pid (a forked pool process makes its own).
It buffers task events (as the worker's own dispatcher does) and sends them as one message when
the delivery's inline steps are done (`flushing`)."""


@contextmanager
def announced(rt: Runtime, cmd: Command, saga_id: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """The task events of the inline step `cmd` around its run (none with task events off)."""
    events = _events(rt)
    if events is None:
        yield
        return
    fields = {"uuid": cmd.task_id}  # the dispatcher adds its hostname and pid
    started = time.monotonic()
    _send(events, "task-received", name=cmd.task, args=repr([saga_id, cmd.step]),
          kwargs=short_repr(kwargs), retries=0, eta=None, expires=None, **fields)
    _send(events, "task-started", **fields)
    outcome = "task-succeeded"
    try:
        yield
    except BaseException:
        outcome = "task-failed"
        raise
    finally:
        _send(events, outcome, result="inline", runtime=time.monotonic() - started, **fields)


@contextmanager
def flushing() -> Iterator[None]:
    """Send the buffered task events of a delivery's inline steps when they are done."""
    try:
        yield
    finally:
        events = _EVENTS.get(os.getpid())
        if events is not None:
            try:
                events.flush(errors=False, groups=True)
            except Exception as e:  # events are for watching: never fail a step for them
                log.warning("task events of inline steps not sent: %s", e)


def _events(rt: Runtime) -> Any:
    app = rt.app
    if app is None or not app.conf.worker_send_task_events:
        return None
    pid = os.getpid()
    if pid not in _EVENTS:
        from celery import current_task

        hostname = getattr(getattr(current_task, "request", None), "hostname", None) or socket.gethostname()
        _EVENTS.clear()
        _EVENTS[pid] = app.events.Dispatcher(app.connection_for_write(), hostname=hostname, enabled=True,
                                             buffer_group=["task"], buffer_limit=1000)
    return _EVENTS[pid]


def _send(events: Any, type_: str, **fields: Any) -> None:
    try:
        events.send(type_, **fields)
    except Exception as e:  # events are for watching: never fail a step for them
        log.warning("task event %s of an inline step not sent: %s", type_, e)
