"""Choreography events in the in-process tier, with no server: sent through a Celery app on kombu's
filesystem broker in the test's folder, and delivered by calling the consumer's body
(`choreography.consumer.consume`, what the task `events.<service>` runs in a worker) in the order the
test chooses. The task itself is not made here: building a Celery app's task registry takes in every
shared task the process declared, the test suite's included; `Delivery` stands for the task's name and
request, and a retry (which Celery would schedule) fails the test with the handler's error, unless the
test delivers with `attempts=` (then the retry is delivered at once, as the next attempt).
The outbox is the list of what was published: `deliver` hands each (event, service) pair over once,
unless the test asks for it again (`redeliver`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery

from workflows.choreography import bus
from workflows.choreography.consumer import consume
from workflows.runtime.container import Runtime


def filesystem_app(folder: Path) -> Celery:
    for d in ("queue", "control"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    app = Celery("inproc-events", broker="filesystem://", set_as_current=False)
    app.conf.broker_transport_options = {"data_folder_in": str(folder / "queue"),
                                         "data_folder_out": str(folder / "queue"),
                                         "control_folder": str(folder / "control")}
    app.conf.task_serializer = app.conf.result_serializer = "json"
    app.conf.accept_content = ["json"]
    return app


@dataclass
class Request:
    id: str
    retries: int = 0


@dataclass
class Delivery:
    """What `consume` reads of the Celery task delivering one message: its name and request."""

    name: str
    request: Request

    retries_allowed: bool = False

    def retry(self, *, exc: BaseException, kwargs: dict[str, Any] | None = None, **_: Any) -> BaseException:
        if self.retries_allowed:
            raise Retried(kwargs or {}) from exc
        raise AssertionError(f"{self.name}: the handler failed and would be retried: {exc!r}") from exc


class Retried(Exception):
    """Celery would deliver the message again with these keyword arguments (the next attempt)."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__(kwargs)
        self.kwargs = kwargs


@dataclass
class InprocBus:
    rt: Runtime
    app: Celery
    sagas: list[str] = field(default_factory=list)
    """The choreographed sagas whose events this bus delivers."""
    delivered: list[tuple[str, str, str]] = field(default_factory=list)
    """(event type, service, event id) in the order delivered."""

    def track(self, saga_id: str) -> str:
        self.sagas.append(saga_id)
        return saga_id

    def pending(self) -> list[tuple[dict[str, Any], str]]:
        """(envelope, service) of every delivery published and not delivered yet, oldest first."""
        done = {(e, s) for _, s, e in self.delivered}
        return [(row.envelope, service) for saga_id in self.sagas for row in self.rt.store.outbox_of(saga_id)
                if row.sent_at is not None for service in row.targets if (row.event_id, service) not in done]

    def deliver(self, service: str | None = None, event_type: str | None = None,
                attempts: int = 1) -> list[dict[str, Any] | None]:
        """Deliver what is pending (only to `service`, only of `event_type`), until nothing is left
        (each with up to `attempts` attempts, see `redeliver`)."""
        results = []
        while True:
            ready = [(env, s) for env, s in self.pending() if service in (None, s)
                     and event_type in (None, env["eventType"])]
            if not ready:
                return results
            for env, s in ready:
                results.append(self.redeliver(env, s, attempts=attempts))

    def redeliver(self, envelope: dict[str, Any], service: str, *, attempts: int = 1,
                  attempt: int = 1) -> dict[str, Any] | None:
        """Hand `envelope` to `service`'s consumer (again), as the broker would, as its `attempt`; a retry
        the handler asks for is delivered at once, up to `attempts` deliveries in all (then the test fails)."""
        self.delivered.append((envelope["eventType"], service, envelope["eventId"]))
        kwargs: dict[str, Any] = {"event": envelope} if attempt == 1 else {"event": envelope, "attempt": attempt}
        for n in range(1, attempts + 1):
            task = Delivery(bus.task_name(service), Request(f"{envelope['eventId']}.{service}", retries=n - 1),
                            retries_allowed=n < attempts)
            try:
                return consume(task, service, (envelope["sagaId"], envelope["eventType"]),  # type: ignore[arg-type]
                               kwargs)
            except Retried as again:
                kwargs = again.kwargs
        raise AssertionError("unreachable: the last attempt's retry fails the test")
