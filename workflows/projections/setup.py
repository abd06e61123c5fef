"""The projections a process runs with, from its settings (`Runtime.projections`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from workflows.projections.base import Projection, Projections
from workflows.projections.views import saga_event, saga_hash
from workflows.runtime.settings import Settings

if TYPE_CHECKING:
    from workflows.notifications.notifier import Notifier

EVENTS = "saga-events"
"""The Kafka projection's name (its records' dedup keys start with it)."""
READ_MODEL = "redis-hash"


def from_settings(settings: Settings, notifier: Notifier | None = None) -> Projections:
    """`saga-events` when `kafka_bootstrap_servers` is set, the Redis read model when
    `redis_read_model_url` is, the notifications (`workflows.notifications`) when `notifier` has a
    target; none otherwise (nothing derived, written or sent)."""
    found = []
    if notifier is not None and (notifier.log_line or notifier.webhook is not None):
        from workflows.notifications.projection import notify_projection
        found.append(notify_projection(notifier))
    if settings.kafka_bootstrap_servers:
        from workflows.projections.kafka import KafkaSink
        found.append(Projection(EVENTS, saga_event, KafkaSink(settings.kafka_bootstrap_servers,
                                                              settings.kafka_events_topic)))
    if settings.redis_read_model_url:
        from workflows.projections.redis_hash import RedisHashSink
        found.append(Projection(READ_MODEL, saga_hash, RedisHashSink(settings.redis_read_model_url,
                                                                     ttl=settings.redis_read_model_ttl)))
    return Projections(found)
