"""The names and interfaces of `workflows.runtime.tracing` (shared with `workflows.runtime.otel`,
which implements them): the trace headers of a step message, and what a tracing gives the runtime."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from workflows.core.state import Command, RunState

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_LINK = "saga_trace_link"
"""A message header: the `traceparent` its attempt links to, beginning a new trace (a long backoff)."""
HEADERS = (TRACEPARENT, TRACESTATE, TRACE_LINK)


class Segment(Protocol):
    """The span beginning a run's trace segment (a start, a resumption)."""

    @property
    def context(self) -> str | None:
        """Its `traceparent`: written on the run as its current segment. None with tracing off."""
        ...

    def link(self, previous: str | None) -> None:
        """Link it to the run's previous segment (its `traceparent`)."""
        ...

    def annotate(self, **attributes: str | int) -> None:
        """Add attributes (the saga id, once known)."""
        ...


class Attempts(Protocol):
    """The step-attempt spans of one delivery, one after the other (the message's, then its inline steps')."""

    def begin(self, *, saga_id: str, saga_type: str, saga_version: int | None, step: str, side: str, attempt: int,
              task: str, task_id: str) -> None:
        """End the attempt before (if any) and begin this one, current until the next or the end."""
        ...

    def failed(self, error: BaseException) -> None:
        """The current attempt's step function raised `error`."""
        ...

    def __enter__(self) -> Attempts: ...

    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None: ...


class Tracing(Protocol):
    enabled: bool

    def message_headers(self, run: RunState, cmd: Command) -> dict[str, str]:
        """The trace headers of the step message `cmd` of `run`: the current span's context (or the
        run's segment when none is current), as `traceparent`, or as `saga_trace_link` when the
        message waits longer than the park threshold."""
        ...

    def attempts(self, headers: Mapping[str, Any] | None) -> Attempts:
        """The attempt spans of a delivery whose message had `headers`."""
        ...

    def segment(self, saga_type: str, saga_id: str | None, what: str) -> Any:
        """A context manager: the span of a new segment of a run (a `Segment`), current inside it:
        the child of the current span (a traced request, a step), else the root of a new trace."""
        ...

    def event(self, service: str, envelope: Any) -> Any:
        """A context manager: the span of `service` handling a choreography event, the child of the
        `traceparent` its envelope carries."""
        ...

    def traceparent(self) -> str | None:
        """The current span's `traceparent`, if one is current (what a published event carries)."""
        ...
