"""Poison messages: anything on a queue the workers consume that is not a task they can take is
kept as a dead letter (kind "message") with its raw bytes and the reason, and the worker goes on.

Celery's consumer already survives most of them, but drops them with a log line: a body its
content type cannot decode, a message that is not a Celery task message, a task no worker here
has, an invalid task message. `Consumer` (installed as `worker_consumer` by `workflows.install`)
keeps each one first, on every broker. Two more kinds are caught elsewhere: a body that is not
JSON at all on Redis, which kombu's Redis transport fails to read before Celery sees it
(`redis_broker`), and a step message whose arguments do not fit the step message's schema
(`orchestration.message`, in the step task).
"""
from __future__ import annotations

import base64
import json
import logging
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger("workflows.broker")

RAW_LIMIT = 100_000
"""Bytes of a message body kept (its text and its base64)."""


def dead_letter_message(raw: bytes | str, reason: str, *, task: str = "(undecodable message)",
                        queue: str | None = None, headers: dict[str, Any] | None = None) -> None:
    """Keep a message no worker can take as a dead letter (never raises: the worker must go on).
    Its text (NUL spelled out: PostgreSQL's JSON holds none) and its exact bytes (base64)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    text = data[:RAW_LIMIT].decode("utf-8", "replace").replace("\x00", "\\x00")
    try:
        from workflows.core.state import DeadLetter, ErrorInfo, MessageInfo
        from workflows.runtime.container import get_runtime

        rt = get_runtime()
        message = MessageInfo(task_name=task, queue=queue, args=[],
                              kwargs={"raw": text, "raw_base64": base64.b64encode(data[:RAW_LIMIT]).decode()},
                              headers=_jsonable(headers or {}))
        rt.loop.dead_letter(DeadLetter(rt.ids(), "message", None, task, 0, ErrorInfo("UndecodableMessage", reason),
                                       message), saga_id=None)
        log.error("a message no worker can take was dead-lettered: %s", reason)
    except Exception:  # the database is down too: say so, and go on
        log.exception("a message no worker can take could not be dead-lettered (%s); its text: %r", reason,
                      text[:2000])


def _jsonable(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers as JSON the database holds (a foreign message's may hold anything)."""
    try:
        return dict(json.loads(json.dumps(headers, default=repr).replace("\\u0000", "\\\\x00")))
    except (TypeError, ValueError):
        return {"repr": repr(headers)[:2000]}


def _raw(message: Any) -> bytes | str:
    body = getattr(message, "body", b"")
    return body if isinstance(body, bytes | str) else repr(body)


def _where(message: Any) -> tuple[str | None, dict[str, Any]]:
    info = getattr(message, "delivery_info", None) or {}
    headers = getattr(message, "headers", None)
    props = {"content_type": getattr(message, "content_type", None),
             "content_encoding": getattr(message, "content_encoding", None),
             "headers": headers if isinstance(headers, dict) else repr(headers)}
    return info.get("routing_key") or None, props


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery is untyped
    """Celery's consumer, keeping every message it would drop as a dead letter first."""

    class Blueprint(CeleryConsumer.Blueprint):  # type: ignore[misc]
        # on quorum queues: declare every queue before binding it to the delayed exchange (runtime.brokers)
        default_steps = [s.replace("celery.worker.consumer.delayed_delivery:DelayedDelivery",
                                   "workflows.runtime.brokers:DelayedDelivery")
                         for s in CeleryConsumer.Blueprint.default_steps]

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        queue, props = _where(message)
        dead_letter_message(_raw(message), f"the message body cannot be decoded as {props['content_type']!r} "
                            f"on queue {queue!r}: {type(exc).__name__}: {exc}", queue=queue, headers=props)
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        queue, props = _where(message)
        dead_letter_message(_raw(message), f"the message on queue {queue!r} is not a Celery task message",
                            queue=queue, headers=props)
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        queue, props = _where(message)
        name = str((props["headers"] or {}).get("task")) if isinstance(props["headers"], dict) else None
        dead_letter_message(_raw(message), f"no task {name!r} is registered on this worker (queue {queue!r})",
                            task=name or "(unknown task)", queue=queue, headers=props)
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        queue, props = _where(message)
        dead_letter_message(_raw(message), f"an invalid task message on queue {queue!r}: {type(exc).__name__}: "
                            f"{exc}", queue=queue, headers=props)
        super().on_invalid_task(body, message, exc)
