"""The list page's activity chart: runs started, completed, compensated and failed per slot, as
polylines over the last hour (pure: buckets in, coordinates out; the template draws the SVG)."""
from __future__ import annotations

from dataclasses import dataclass

from workflows.store.base import ActivityBucket

SERIES = ("started", "completed", "compensated", "failed")
WIDTH, HEIGHT, PAD = 480, 120, 24


@dataclass(frozen=True)
class Series:
    name: str
    points: str
    """SVG polyline points."""
    total: int


@dataclass(frozen=True)
class Chart:
    series: list[Series]
    peak: int
    labels: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    pad: int = PAD


def build(buckets: list[ActivityBucket]) -> Chart:
    peak = max([1] + [getattr(b, s) for b in buckets for s in SERIES])
    n = max(1, len(buckets) - 1)
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD

    def point(i: int, v: int) -> str:
        return f"{PAD + plot_w * i / n:.1f},{HEIGHT - PAD - plot_h * v / peak:.1f}"

    series = [Series(s, " ".join(point(i, getattr(b, s)) for i, b in enumerate(buckets)),
                     sum(getattr(b, s) for b in buckets)) for s in SERIES]
    labels = [(PAD + plot_w * i / n, b.start.strftime("%H:%M")) for i, b in enumerate(buckets) if i % 3 == 0]
    return Chart(series, peak, labels)
