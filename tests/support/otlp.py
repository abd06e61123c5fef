"""An OTLP/HTTP trace receiver for the tracing tests (a small HTTP server decoding OTLP's protobuf
with opentelemetry-proto), and this process traced, exporting to it."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                       ExportTraceServiceResponse)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from workflows import get_runtime
from workflows.runtime.dispatch import CeleryDispatcher
from workflows.runtime.otel import OtelTracing


class Span(dict[str, Any]):
    """One received span: name, ids (hex), parent, links, times, attributes, and its service."""


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: POST /v1/traces, protobuf; keeps every span it was sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def of(self, **attributes: Any) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if all(s["attributes"].get(k) == v for k, v in attributes.items())]

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s["trace_id"] == trace_id]


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in s.attributes}
                    got.append(Span(name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                                    parent=s.parent_span_id.hex() or None, service=service,
                                    start=s.start_time_unix_nano, end=s.end_time_unix_nano, attributes=attrs,
                                    links=[(x.trace_id.hex(), x.span_id.hex()) for x in s.links]))
        with self.server.lock:
            self.server.spans.extend(got)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def receiving() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.shutdown()


@contextmanager
def traced_process(receiver: Receiver) -> Iterator[TracerProvider]:
    """This process (a web app calling start_saga and signal) traced too, exporting to `receiver`."""
    provider = TracerProvider(resource=Resource.create({"service.name": "web"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")))
    rt = get_runtime()
    tracing = OtelTracing(provider.get_tracer("workflows"), park_after=60)
    saved = rt._tracing, rt._dispatcher
    rt._tracing, rt._dispatcher = tracing, CeleryDispatcher(rt.app, tracing)
    try:
        yield provider
    finally:
        rt._tracing, rt._dispatcher = saved
        provider.shutdown()


def ancestors(span: Span, spans: list[Span]) -> list[str]:
    by_id = {s["span_id"]: s for s in spans}
    out, parent = [], span["parent"]
    while parent is not None and parent in by_id:
        out.append(parent)
        parent = by_id[parent]["parent"]
    return out


def all_named(receiver: Receiver, saga_id: str, names: list[str]) -> dict[str, Span] | None:
    """The run's span of each name, once every one has been received."""
    found = {s["name"]: s for s in receiver.of(**{"saga.id": saga_id}) if s["name"] in names}
    return found if len(found) == len(names) else None


def one(receiver: Receiver, saga_id: str, name: str) -> Span:
    [span] = [s for s in receiver.of(**{"saga.id": saga_id}) if s["name"] == name]
    return span
