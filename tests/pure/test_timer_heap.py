"""The worker step that drops cancelled timers from the main process's event-loop heap."""
from __future__ import annotations

from kombu.asynchronous.timer import Timer

from workflows.runtime.timer_heap import compact


def test_compact_drops_cancelled_timers_and_keeps_the_live_ones_in_order() -> None:
    # Given a kombu timer holding many cancelled time-limit timers, as after many tasks
    timer = Timer()
    fired: list[int] = []
    trefs = [timer.call_after(300 + i, fired.append, (i,)) for i in range(1000)]
    for i, tref in enumerate(trefs):
        if i % 10:
            timer.cancel(tref)

    # When the heap is compacted
    removed = compact(timer)

    # Then only the live entries are left, still a heap in eta order
    assert removed == 900 and len(timer) == 100
    assert [entry.args[0] for _eta, _prio, entry in timer.queue] == list(range(0, 1000, 10))
    assert compact(timer) == 0
