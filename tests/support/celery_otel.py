"""Celery's own OpenTelemetry instrumentation, for workers of tests/servers/test_tracing_workers.py that
load it (SAGA_EXTRA_MODULES=...,tests.support.celery_otel): its `run/<task>` and `apply_async/<task>`
spans around ours, and its own `traceparent` written into the headers of what it publishes."""
from opentelemetry.instrumentation.celery import CeleryInstrumentor

CeleryInstrumentor().instrument()
