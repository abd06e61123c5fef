"""The `saga-events` projection's sink: a Kafka producer (the `kafka` extra, confluent-kafka).

Each record goes to the events topic keyed by its saga id (one saga's events stay on one partition,
in order), its value the JSON body (`views.saga_event`), a header `event_id` with its dedup key.
`send` waits for the broker's acknowledgement (`flush`) before the caller deletes the pending rows
and publishes the next step: a record counts as sent only once acknowledged. While the broker is
unreachable a send fails fast for `cooldown` seconds after a failed one, so steps are not held up:
their records stay pending and the sweeper sends them once the broker is back.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from workflows._extras import require
from workflows.core.transition import ProjectedRecord


class KafkaUnavailable(RuntimeError):
    """The broker did not acknowledge the records in time (they stay pending)."""


def producer_config(bootstrap_servers: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap_servers, "acks": "all", "linger.ms": 0,
            "message.timeout.ms": 30000, "socket.timeout.ms": 10000, "client.id": "celery-sagas"}


class KafkaSink:
    def __init__(self, bootstrap_servers: str, topic: str, *, timeout: float = 5.0, cooldown: float = 5.0) -> None:
        self.bootstrap_servers, self.topic, self.timeout, self.cooldown = bootstrap_servers, topic, timeout, cooldown
        self._producer: Any = None
        self._failed_at = 0.0

    @property
    def producer(self) -> Any:
        if self._producer is None:
            require("kafka", "the saga-events projection", "confluent_kafka")
            from confluent_kafka import Producer
            self._producer = Producer(producer_config(self.bootstrap_servers))
        return self._producer

    def send(self, records: Sequence[ProjectedRecord]) -> Sequence[str]:
        if time.monotonic() - self._failed_at < self.cooldown:
            raise KafkaUnavailable(f"Kafka at {self.bootstrap_servers} failed less than {self.cooldown:g}s ago")
        acked: list[str] = []
        errors: list[str] = []

        def delivered(err: Any, _msg: Any, record_id: str) -> None:
            (errors.append(str(err)) if err is not None else acked.append(record_id))

        for r in records:
            self.producer.produce(self.topic, key=r.saga_id.encode(), value=json.dumps(r.body).encode(),
                                  headers={"event_id": r.id.encode()},
                                  on_delivery=lambda err, msg, rid=r.id: delivered(err, msg, rid))
        left = self.producer.flush(self.timeout)
        if left or errors:
            self._failed_at = time.monotonic()
            if not acked:
                raise KafkaUnavailable(f"{left} record(s) unacknowledged after {self.timeout:g}s"
                                       f"{': ' + errors[0] if errors else ''}")
        else:
            self._failed_at = 0.0
        return acked

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None
