"""The test's clock: time moves when the test says so, nothing sleeps."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

START = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
"""Where every test clock starts (a fixed instant: a test's times are the same on every run)."""


class Clock:
    """A callable clock for `Runtime(clock=...)`: `clock()` is the test's now; `advance` moves it."""

    def __init__(self, now: datetime = START) -> None:
        if now.tzinfo is None:
            raise ValueError("the test clock needs an aware datetime (tzinfo=timezone.utc)")
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, by: float | timedelta) -> datetime:
        """Move the clock forward by `by` (seconds or a timedelta); returns the new now."""
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        if step < timedelta(0):
            raise ValueError(f"the test clock only moves forward (asked to move by {step})")
        self.now += step
        return self.now

    def __repr__(self) -> str:
        return f"Clock({self.now.isoformat()})"
