"""Keep the worker's main process flat: drop cancelled timers from its event loop's heap.

Every step task carries Celery time limits (its soft and hard `timeout`). The prefork pool arms a
timer in the main process for each task and cancels it when the task returns; kombu's timer marks
a cancelled entry and leaves it in its heap until the time it was set for. With the default
300 s step timeout the main process holds `task rate x 300 s` dead entries: about 12 MB more
every 5000 sagas at 50 sagas/s until that plateau (bench/run.py --rss-check). This worker step
removes cancelled entries every `INTERVAL` seconds, on the event loop's own thread.
"""
from __future__ import annotations

import heapq
import logging
from typing import Any

from celery import bootsteps

log = logging.getLogger("workflows.timer_heap")

INTERVAL = 10.0


def compact(timer: Any) -> int:
    """Remove the cancelled entries of a kombu `Timer`'s heap; returns how many were removed."""
    heap = getattr(timer, "_queue", None)
    if not isinstance(heap, list):  # another kombu: nothing to do, nothing to break
        return 0
    live = [item for item in heap if not getattr(item[2], "canceled", False)]
    removed = len(heap) - len(live)
    if removed:
        heapq.heapify(live)
        heap[:] = live  # in place: the timer keeps its list
    return removed


class CompactTimerHeap(bootsteps.StartStopStep):  # type: ignore[misc]  # celery ships no types: the base is Any
    """Worker step: `compact` the event loop's timer every `INTERVAL` seconds."""

    requires = ("celery.worker.components:Hub",)

    def start(self, worker: Any) -> None:
        hub = getattr(worker, "hub", None)
        if hub is not None and getattr(hub, "timer", None) is not None:
            hub.call_repeatedly(INTERVAL, compact, hub.timer)
