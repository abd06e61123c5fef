"""Traces of saga runs (OpenTelemetry), when `SAGA_TRACING=otel` and the `otel` extra is installed.

Nothing in this module imports OpenTelemetry. A process runs with `NO_TRACING` (every hook does
nothing) unless tracing is on; then `workflows.runtime.otel`, the only module that imports it,
is loaded (`tracing_for`). What the hooks give, with tracing on:

* a **step attempt** is a span in the worker that ran it (`Tracing.attempts`), with the saga id,
  type, version, step, attempt and side as attributes; the step function runs inside it, so a
  service's own spans join the saga's trace;
* every **step message** carries the W3C `traceparent` of the span that published it, in its
  message headers (`Tracing.message_headers`), not in its arguments; an inline step's span is the
  child of the one before it; a **choreography event** carries it in its envelope;
* a run that **parks** (a wait, a scheduled start, a retry backoff longer than
  `SAGA_TRACING_PARK_AFTER`, an operator's or the sweeper's action) goes on in a **new trace**
  linked to the one before (`Tracing.segment`), never in a span open while it waits: the
  `traceparent` of the segment's first span is the run's `trace` (`sagas.trace_context`),
  written with the transition that began it; a delayed retry's message carries `saga_trace_link`
  instead of `traceparent`, and its attempt begins a new linked trace;
* `start_saga` is the first segment: inside a traced web request, it joins the request's trace.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from workflows.runtime.tracing_api import HEADERS, TRACE_LINK, TRACEPARENT, TRACESTATE, Attempts, Segment, Tracing

if TYPE_CHECKING:
    from workflows.core.state import Command, RunState
    from workflows.runtime.settings import Settings

log = logging.getLogger("workflows.tracing")

__all__ = ["HEADERS", "NO_TRACING", "TRACEPARENT", "TRACESTATE", "TRACE_LINK", "Attempts", "NoTracing", "Segment",
           "Tracing", "trace_headers", "tracing_for"]


class _NoSegment:
    context = None

    def link(self, previous: str | None) -> None:
        pass

    def annotate(self, **attributes: str | int) -> None:
        pass


class _NoAttempts:
    def begin(self, **_: Any) -> None:
        pass

    def failed(self, error: BaseException) -> None:
        pass

    def __enter__(self) -> _NoAttempts:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None:
        pass


class NoTracing:
    """Tracing off: every hook does nothing, and nothing of OpenTelemetry is imported."""

    enabled = False
    _segment = _NoSegment()
    _attempts = _NoAttempts()

    def message_headers(self, run: RunState, cmd: Command) -> dict[str, str]:
        return {}

    def attempts(self, headers: Mapping[str, Any] | None) -> Attempts:
        return self._attempts

    @contextmanager
    def segment(self, saga_type: str, saga_id: str | None, what: str) -> Iterator[Segment]:
        yield self._segment

    @contextmanager
    def event(self, service: str, envelope: Any) -> Iterator[None]:
        yield

    def traceparent(self) -> str | None:
        return None


NO_TRACING = NoTracing()

_configured: dict[tuple[str, float], Tracing] = {}


def tracing_for(settings: Settings) -> Tracing:
    """The process's tracing for `settings` (`SAGA_TRACING`), configured once: `NO_TRACING` when off,
    or when the `otel` extra is not installed (said once in a warning)."""
    if settings.tracing != "otel":
        return NO_TRACING
    key = (settings.tracing, settings.tracing_park_after)
    if key not in _configured:
        try:
            from workflows.runtime import otel

            _configured[key] = otel.configure(park_after=settings.tracing_park_after)
        except ImportError as e:
            log.warning("SAGA_TRACING=otel but OpenTelemetry is not installed (%s): tracing is off. "
                        "Install the extra: pip install 'celery-sagas[otel]'", e)
            _configured[key] = NO_TRACING
    return _configured[key]


def trace_headers(source: Mapping[str, Any] | Any) -> dict[str, str]:
    """The trace headers of a received message: from a mapping, or a Celery task request (whose
    custom headers are attributes, and in `headers` on a retry)."""
    if isinstance(source, Mapping):
        return {k: v for k in HEADERS if isinstance(v := source.get(k), str)}
    found = trace_headers(getattr(source, "headers", None) or {})
    for k in HEADERS:
        v = getattr(source, k, None)
        if isinstance(v, str):
            found[k] = v
    return found
