"""The API's request bodies and answers, and the error answers each endpoint declares."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workflows.core.views import SagaView


class Started(BaseModel):
    saga_id: str
    saga_type: str
    status_url: str = Field(description="GET this path to follow the saga")


class StepSummary(BaseModel):
    name: str
    status: str
    attempts: int
    compensation_attempts: int
    redeliveries: int = Field(0, description="Deliveries of the action's message after its worker was lost")
    compensation_redeliveries: int = Field(0, description="The same for its compensation's message")
    result: dict[str, Any] | None
    error: str | None


class HistoryItem(BaseModel):
    at: str
    type: str
    step: str | None
    attempt: int | None


class WaitSummary(BaseModel):
    step: str
    signal: str
    deadline_at: str | None


class ChildSummary(BaseModel):
    id: str
    saga_type: str
    state: str
    parent_step: str | None


class CompensationStageSummary(BaseModel):
    stage: int = Field(description="The stage (0 is the first node of the saga)")
    compensate: list[str] = Field(description="Its steps compensated together, once nothing blocks it")
    waits_for: list[str] = Field(default_factory=list, description="Its steps still in flight: waited for first")
    stuck: list[str] = Field(default_factory=list,
                             description="Its steps whose compensation failed for good: an operator must act")


class WhatNext(BaseModel):
    """What comes next, computed by the engine's own compensation walker (`core.outlook`)."""

    to_run: list[list[str]] = Field(description="A running run's stages still to run, in order: the steps of each")
    compensations: list[CompensationStageSummary] = Field(
        description="The compensations, newest stage first: for a running run those that would run if the "
                    "steps in flight failed now (`if_failed_now`), else those still to run")
    if_failed_now: bool


class SagaStatus(BaseModel):
    id: str
    saga_type: str
    saga_version: int = Field(description="The version of the saga's definition the run is driven by")
    state: str
    terminal: bool
    failure_reason: str | None
    updated_at: str
    starts_at: str | None = Field(default=None, description="When a SCHEDULED run starts")
    waiting_for: list[WaitSummary] = Field(default_factory=list, description="The waits parked on a signal")
    steps: list[StepSummary]
    history: list[HistoryItem]
    open_dead_letters: list[str]
    parent_id: str | None = None
    """A child run: the run whose child step started it (and `parent_step`, that step)."""
    parent_step: str | None = None
    children: list[ChildSummary] = []
    """The child runs this run's child steps started."""
    what_next: WhatNext | None = None
    """The steps still to run and the compensations that would run; None when this API process does not
    hold the run's saga definition."""


class SagaPage(BaseModel):
    items: list[SagaView]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="The next page, if any")


class StepSchema(BaseModel):
    name: str = Field(description="The step (a fan-out's step: its branches' name without the index)")
    input_schema: dict[str, Any] | None = Field(
        description="The JSON schema of the part of the saga's input the step reads (null: untyped)")
    result_schema: dict[str, Any] | None = Field(description="The JSON schema of its action's result (null: untyped)")


class SignalSchema(BaseModel):
    wait: str
    signal: str
    payload_schema: dict[str, Any] | None = Field(description="The JSON schema of the signal's payload (null: "
                                                  "any JSON object)")


class SagaType(BaseModel):
    name: str
    version: int = Field(description="The version described: the newest, unless ?version= asked for another")
    versions: list[int] = Field(description="Every version registered here")
    description: str
    steps: list[str]
    input_schema: dict[str, Any] | None
    step_schemas: list[StepSchema] = Field(description="Every task step, in stage order, with its models' schemas")
    signal_schemas: list[SignalSchema] = Field(description="Every wait, with the schema of its signal's payload")


class SagaVersion(BaseModel):
    saga_type: str
    saga_version: int
    fingerprint: str | None
    runs: dict[str, int] = Field(description="Runs on this version, by state")
    active: int = Field(description="Runs on it not terminal: 0 means it can be retired")
    workers: list[str] = Field(description="Live workers holding it")
    registered_here: bool


class MoveRequest(BaseModel):
    to_version: int = Field(ge=1, le=1_000_000, description="The newer version of the run's saga")
    reason: str = Field(min_length=1, max_length=1000)


class RetryRequest(BaseModel):
    step: str | None = Field(default=None,
                             description="The step to dispatch again (default: the stuck or in-flight one)")
    reason: str = ""


class ReasonRequest(BaseModel):
    reason: str = ""


class RequiredReason(BaseModel):
    reason: str = Field(min_length=1, max_length=1000)


class ErrorBody(BaseModel):
    """Every error answer: what kind of error, and what to do about it."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="The kind: saga_not_found, invalid_request, invalid_operation, ...")
    message: str = Field(description="What went wrong and what to do")
    errors: list[dict[str, Any]] | None = Field(None, description="invalid_request, invalid_input: each problem")
    saga_id: str | None = Field(None, description="idempotency_conflict: the run the key names")


def answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an endpoint, for its OpenAPI spec (schemathesis checks each answer is one)."""
    what = {400: "The body is not JSON", 401: "Missing, unknown, revoked or expired bearer token",
            403: "The credential's role does not allow this (recorded in the access audit)",
            404: "No such saga, saga type, step or dead letter",
            409: "Refused in the current state (recorded in the saga's history), or an idempotency conflict",
            422: "Invalid request: the body, a parameter or a header", 503: "The database or broker is not answering"}
    return {code: {"model": ErrorBody, "description": what[code]} for code in codes}


NOT_FOUND = answers(404)
REFUSED = answers(400, 404, 409)
