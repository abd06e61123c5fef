"""The event envelope: what every choreography event carries around its payload.

    {"eventId": "0f6c…", "eventType": "PaymentProcessed", "sagaId": "3b1e…", "sagaType": "order_parallel",
     "timestamp": "2026-11-27T10:00:05.120000+00:00", "causationId": "9a7d…", "schemaVersion": 1,
     "source": "payment", "payload": {"order_id": "order-789", "payment_id": 202, "amount": "100.00"}}

Seed 001's schema (eventId, eventType, sagaId, timestamp) plus the causation id (the event whose
handling published this one: the history is a tree, not only a list), the schema version, the
choreography the saga runs (`sagaType`, which also routes the event) and the publishing service.
The payload sits in its own object so no business field can shadow an envelope field. JSON only.

An envelope is validated when it is built (`make_envelope`, on publish) and again when a consumer
receives it (`parse_envelope`); a message that fails is refused with `MalformedEvent`, whose
message says what is wrong.
"""
from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from workflows.core.errors import InvalidInput

SCHEMA_VERSION = 1
"""The envelope version this code writes and reads."""

EVENT_TYPE = re.compile(r"^[A-Z][A-Za-z0-9]{0,59}$")
"""PascalCase, past tense by convention (OrderCreated); also a word of the topic routing key."""
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
"""Choreography and service names: lower_snake, no dots (they are words of the routing key)."""
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
"""A W3C `traceparent`: version, trace id, parent span id, flags."""


class MalformedEvent(InvalidInput):
    """A received message is not a valid event envelope. It is dead-lettered, never retried."""


class InvalidEvent(InvalidInput):
    """An event could not be published: bad type, payload or saga. Nothing was written."""


class Envelope(BaseModel):
    """One event, validated. Immutable. Field names are the wire names' snake_case twins."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, str_strip_whitespace=False)

    event_id: str = Field(alias="eventId", min_length=1, max_length=64)
    event_type: str = Field(alias="eventType", pattern=EVENT_TYPE.pattern)
    saga_id: str = Field(alias="sagaId", min_length=1, max_length=64)
    saga_type: str = Field(alias="sagaType", pattern=NAME.pattern)
    timestamp: AwareDatetime
    causation_id: str | None = Field(default=None, alias="causationId", max_length=64)
    schema_version: int = Field(alias="schemaVersion")
    source: str = Field(min_length=1, max_length=100)
    payload: dict[str, Any]
    traceparent: str | None = Field(default=None, pattern=TRACEPARENT.pattern)
    """With tracing on, the W3C trace context of the span that published it: the consumer's span is its
    child, so a saga's events and the services' own spans form one trace. Absent from the wire when None."""

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"schemaVersion {v} is not supported (this code reads {SCHEMA_VERSION})")
        return v

    @field_validator("payload")
    @classmethod
    def _json_payload(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            clean: dict[str, Any] = json.loads(json.dumps(v, allow_nan=False))
            return clean
        except (TypeError, ValueError) as e:
            raise ValueError(f"payload is not JSON: {e}") from None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the bus (camelCase names, ISO timestamp)."""
        untraced = {"traceparent"} if self.traceparent is None else None
        return self.model_dump(mode="json", by_alias=True, exclude=untraced)


def _summary(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in e.errors())


def parse_envelope(data: Any) -> Envelope:
    """Validate a received envelope (the wire form). Raises `MalformedEvent` with the reason."""
    if not isinstance(data, dict):
        raise MalformedEvent(f"an event must be a JSON object, got {type(data).__name__}")
    try:
        return Envelope.model_validate(data)
    except ValidationError as e:
        raise MalformedEvent(f"malformed event: {_summary(e)}") from None


def make_envelope(event_type: str, payload: Any, *, saga_id: str, saga_type: str, source: str,
                  causation_id: str | None = None, now: datetime | None = None,
                  traceparent: str | None = None) -> Envelope:
    """Build and validate a new event with a fresh id. Raises `InvalidEvent`."""
    if not isinstance(payload, dict):
        raise InvalidEvent(f"the payload of {event_type!r} must be a JSON object (a dict), "
                           f"got {type(payload).__name__}")
    try:
        return Envelope(event_id=str(uuid.uuid4()), event_type=event_type, saga_id=saga_id, saga_type=saga_type,
                        timestamp=now or datetime.now(timezone.utc), causation_id=causation_id,
                        schema_version=SCHEMA_VERSION, source=source, payload=payload, traceparent=traceparent)
    except ValidationError as e:
        raise InvalidEvent(f"cannot publish {event_type!r}: {_summary(e)}") from None


def salvage(data: Any) -> tuple[str | None, str | None, str | None]:
    """(saga id, event type, event id) read from a malformed envelope, where present and sane."""
    if not isinstance(data, dict):
        return None, None, None

    def field(name: str, limit: int) -> str | None:
        v = data.get(name)
        return v if isinstance(v, str) and 0 < len(v) <= limit else None

    return field("sagaId", 64), field("eventType", 100), field("eventId", 64)
