"""Wiring the bus into a Celery app: one consumer task and one queue per subscribing service.

`workflows.install(app)` calls `install_consumers` after importing the modules that declare
choreographies, so `celery -A worker worker` consumes every service's event queue (or only some:
`-Q events.payment`). A message that reaches an event queue but is not a Celery task message (an
event published by hand, by another language's client), or names a task this worker does not
know, is refused by Celery; `_refused` dead-letters it with the reason instead of losing it.
"""
from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import task_rejected, task_unknown

from workflows.choreography import bus, reactions
from workflows.choreography.declaration import choreographies
from workflows.core.state import ErrorInfo, MessageInfo
from workflows.runtime.delivery import DELIVERY_OPTIONS

log = logging.getLogger("workflows.choreography")


def install_consumers(app: Celery, _runtime: Any = None) -> list[str]:
    """Register `events.<service>` tasks and their queues (with bindings) on `app`. Returns the queues.

    Every saga's `OnEvent` is checked first (its choreography is declared, its event type known): a
    `DefinitionError` says which wait and what to do."""
    reactions.check_on_events({ch.name: ch.event_types() for ch in choreographies.all()})
    routes = choreographies.routes()
    queues = [q for q in (app.conf.task_queues or []) if not q.name.startswith(bus.namespace() + ".")]
    added = []
    for service, pairs in routes.items():
        _make_consumer_task(app, service)
        q = bus.consumer_queue(service, pairs)
        queues.append(q)
        added.append(q.name)
    if added:
        app.conf.task_queues = queues
    return added


def _make_consumer_task(app: Celery, service: str) -> Task:
    from workflows.choreography.consumer import consume

    def consume_events(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        return consume(self, service, args, kwargs)

    consume_events.__name__ = f"consume_{service}_events"
    consume_events.__doc__ = f"Deliver events to the {service} service's handlers (saga id, event type, event)."
    return app.task(bind=True, name=bus.task_name(service), queue=bus.queue_name(service), ignore_result=True,
                    typing=False, **DELIVERY_OPTIONS)(consume_events)


def _is_event_message(message: Any) -> bool:
    info = getattr(message, "delivery_info", None) or {}
    return info.get("exchange") == bus.namespace()


def _refused(message: Any, reason: str) -> None:
    from workflows.choreography.consumer import dead_letter
    from workflows.runtime.container import get_runtime

    try:
        body = message.decode()
    except Exception:  # not even JSON: keep the text
        raw = message.body
        body = {"raw": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)}
    info = message.delivery_info or {}
    key = str(info.get("routing_key") or "")
    service = key.rsplit(".", 1)[-1] if key.count(".") >= 2 else ""
    event = body if isinstance(body, dict) and "eventId" in body else (
        body[1].get("event") if isinstance(body, list) and len(body) > 1 and isinstance(body[1], dict) else body)
    msg = MessageInfo(task_name=str((message.headers or {}).get("task") or "(not a task)"),
                      queue=bus.queue_name(service) if service else None, args=[],
                      kwargs={"event": event}, headers={"routing_key": key, "consumer": service})
    try:
        dead_letter(get_runtime(), service, None, event, msg, ErrorInfo("RefusedMessage", reason), attempts=0)
    except Exception:
        log.exception("could not dead-letter a refused event message (routing key %s)", key)


@task_rejected.connect  # type: ignore[untyped-decorator]  # celery ships no types
def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    if message is not None and _is_event_message(message):
        _refused(message, f"not a Celery task message ({exc or 'unknown format'})")


@task_unknown.connect  # type: ignore[untyped-decorator]  # celery ships no types
def _on_unknown(sender: Any = None, message: Any = None, exc: Any = None, name: Any = None, **_: Any) -> None:
    if message is not None and _is_event_message(message):
        _refused(message, f"no task {name!r} in this worker")
