"""The OpenTelemetry side of `workflows.runtime.tracing`: the only module that imports it, loaded
only with `SAGA_TRACING=otel` (the `otel` extra).

The process's tracer provider is used if one is set (an `opentelemetry-instrument` run, or the
application's own); otherwise `configure` sets one exporting over OTLP, as the standard
variables say: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL`
(`http/protobuf`, the default, or `grpc` with `opentelemetry-exporter-otlp-proto-grpc`),
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_SCHEDULE_DELAY`; `OTEL_TRACES_EXPORTER=console`
prints spans instead, `none` exports nothing.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from workflows.runtime.tracing_api import TRACE_LINK, TRACEPARENT, Attempts

if TYPE_CHECKING:
    from workflows.core.state import Command, RunState

TRACER = "workflows"


def parse(traceparent: str | None) -> SpanContext | None:
    """The span context a W3C `traceparent` names (`00-<trace id>-<span id>-<flags>`), or None."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        sc = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True,
                         trace_flags=TraceFlags(int(parts[3], 16)))
    except ValueError:
        return None
    return sc if sc.is_valid else None


def format_context(sc: SpanContext) -> str:
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def _current() -> SpanContext | None:
    sc = trace.get_current_span().get_span_context()
    return sc if sc.is_valid else None


def _under(sc: SpanContext | None) -> otel_context.Context:
    """A context whose parent is `sc` (an empty one, a new trace, for None)."""
    empty = otel_context.Context()
    return empty if sc is None else trace.set_span_in_context(NonRecordingSpan(sc), empty)


class OtelSegment:
    def __init__(self, span: trace.Span) -> None:
        self.span = span

    @property
    def context(self) -> str | None:
        sc = self.span.get_span_context()
        return format_context(sc) if sc.is_valid else None

    def link(self, previous: str | None) -> None:
        sc = parse(previous)
        if sc is not None and sc.trace_id != self.span.get_span_context().trace_id:
            self.span.add_link(sc, {"saga.link": "previous segment"})

    def annotate(self, **attributes: str | int) -> None:
        self.span.set_attributes({f"saga.{k}": v for k, v in attributes.items()})


class OtelAttempts:
    """One delivery's attempt spans: the message's own, then each inline step's, the child of the one before."""

    def __init__(self, tracer: trace.Tracer, headers: Mapping[str, Any] | None) -> None:
        headers = headers or {}
        self.tracer = tracer
        self.parent = parse(headers.get(TRACEPARENT))
        self.linked = parse(headers.get(TRACE_LINK))
        self.span: trace.Span | None = None
        self.token: object | None = None
        self.previous: SpanContext | None = None

    def begin(self, *, saga_id: str, saga_type: str, saga_version: int | None, step: str, side: str, attempt: int,
              task: str, task_id: str) -> None:
        self._end()
        links: list[Link] = []
        if self.previous is not None:  # an inline step: the child of the step before it
            ctx: otel_context.Context | None = _under(self.previous)
        elif self.linked is not None:  # after a long backoff: a new trace, linked to the attempt before
            ctx, links = _under(None), [Link(self.linked, {"saga.link": "previous segment"})]
        else:
            current = _current()  # Celery's own instrumentation's span, when it is installed
            if current is not None and (self.parent is None or current.trace_id == self.parent.trace_id):
                ctx = None
            else:
                ctx = _under(self.parent)
        attributes: dict[str, str | int] = {"saga.id": saga_id, "saga.type": saga_type, "saga.step": step,
                                            "saga.attempt": attempt, "saga.side": side, "saga.task": task,
                                            "messaging.message.id": task_id}
        if saga_version is not None:
            attributes["saga.version"] = saga_version
        self.span = self.tracer.start_span(f"{side} {step}", context=ctx, kind=SpanKind.CONSUMER,
                                           attributes=attributes, links=links)
        self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def failed(self, error: BaseException) -> None:
        if self.span is not None:
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))

    def _end(self) -> None:
        if self.span is None:
            return
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
        self.span.end()
        self.previous, self.span, self.token = self.span.get_span_context(), None, None

    def __enter__(self) -> OtelAttempts:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object, /) -> None:
        if isinstance(exc, BaseException):
            self.failed(exc)
        self._end()


class OtelTracing:
    enabled = True

    def __init__(self, tracer: trace.Tracer, park_after: float,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.tracer, self.park_after, self.clock = tracer, park_after, clock

    def message_headers(self, run: RunState, cmd: Command) -> dict[str, str]:
        current = _current()
        traceparent = format_context(current) if current is not None else run.trace
        if traceparent is None:
            return {}
        if cmd.eta is not None and (cmd.eta - self.clock()).total_seconds() > self.park_after:
            return {TRACE_LINK: traceparent}
        return {TRACEPARENT: traceparent}

    def attempts(self, headers: Mapping[str, Any] | None) -> Attempts:
        return OtelAttempts(self.tracer, headers)

    @contextmanager
    def segment(self, saga_type: str, saga_id: str | None, what: str) -> Iterator[OtelSegment]:
        attributes = {"saga.type": saga_type, **({"saga.id": saga_id} if saga_id else {})}
        with self.tracer.start_as_current_span(f"saga {what}", kind=SpanKind.INTERNAL, attributes=attributes) as span:
            yield OtelSegment(span)

    @contextmanager
    def event(self, service: str, envelope: Any) -> Iterator[None]:
        parent = parse(getattr(envelope, "traceparent", None))
        attributes = {"saga.id": envelope.saga_id, "saga.type": envelope.saga_type, "saga.event": envelope.event_type,
                      "saga.service": service, "messaging.message.id": envelope.event_id}
        with self.tracer.start_as_current_span(f"event {envelope.event_type} {service}", kind=SpanKind.CONSUMER,
                                               context=_under(parent) if parent else None, attributes=attributes):
            yield

    def traceparent(self) -> str | None:
        current = _current()
        return format_context(current) if current is not None else None


def configure(*, park_after: float) -> OtelTracing:
    """Tracing for this process: the tracer provider set, or one exporting as the OTEL_* variables say."""
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_provider())
    return OtelTracing(trace.get_tracer(TRACER), park_after)


def _provider() -> trace.TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "sagas"})
    provider = TracerProvider(resource=resource)
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    exporter: SpanExporter | None
    if kind == "none":
        exporter = None
    elif kind == "console":
        exporter = ConsoleSpanExporter()
    elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")).strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as GrpcExporter)
        exporter = GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
