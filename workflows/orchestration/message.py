"""The step message's schema: what a step task accepts as its arguments.

`runtime.dispatch.message_for` writes them: `[saga id, step]` and `saga`, `kind`, `version`,
`saga_version`, `input`, `attempt`, with `results` (an action) or `result` (a compensation), and
`error` (a compensation of an action that did not succeed). A message of a step
task's name that does not fit (a producer's bug, a hand-made message, an older format) is kept as a
dead letter of kind "message" with the reason, and acknowledged: it would only fail again.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class StepMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    saga_id: str = Field(min_length=1, max_length=64)
    step: str = Field(min_length=1, max_length=100)
    saga: str = Field(min_length=1, max_length=100)
    kind: Literal["action", "compensation"]
    version: int = Field(ge=1)
    input: dict[str, Any]
    attempt: int = Field(1, ge=1)
    results: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    """A compensation of an action that failed or timed out: its error, `{"type", "message"}`
    (absent otherwise, and in a message of an older release)."""
    saga_version: int | None = Field(None, ge=1)
    """The version of the saga the run started on (absent in a message of an older release)."""
    handoffs: int = Field(0, ge=0, le=1000)
    """Times a worker without the run's saga version handed this message on."""

    def handle_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `handle_step` (all but the saga id and step)."""
        absent = {"error"} if self.error is None else set()  # as the message carries it: only when known
        return self.model_dump(exclude={"saga_id", "step", *absent})


def parse_step_message(args: tuple[Any, ...], kwargs: dict[str, Any]) -> StepMessage | str:
    """The message, or what is wrong with it (a sentence naming each problem)."""
    if len(args) != 2:
        return f"the step message does not fit its schema: 2 positional arguments (saga id, step), not {len(args)}"
    try:
        return StepMessage.model_validate({"saga_id": args[0], "step": args[1], **kwargs})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'message'}: {err['msg']}" for err in e.errors())
        return f"the step message does not fit its schema: {problems}"
