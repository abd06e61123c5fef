"""The projections a process runs with, from its settings (`Runtime.projections`)."""
from __future__ import annotations

from workflows.projections.base import Projection, Projections
from workflows.projections.views import saga_event, saga_hash
from workflows.runtime.settings import Settings

EVENTS = "saga-events"
"""The Kafka projection's name (its records' dedup keys start with it)."""
READ_MODEL = "redis-hash"


def from_settings(settings: Settings) -> Projections:
    """`saga-events` when `kafka_bootstrap_servers` is set, the Redis read model when
    `redis_read_model_url` is; none otherwise (nothing derived, written or sent)."""
    found = []
    if settings.kafka_bootstrap_servers:
        from workflows.projections.kafka import KafkaSink
        found.append(Projection(EVENTS, saga_event, KafkaSink(settings.kafka_bootstrap_servers,
                                                              settings.kafka_events_topic)))
    if settings.redis_read_model_url:
        from workflows.projections.redis_hash import RedisHashSink
        found.append(Projection(READ_MODEL, saga_hash, RedisHashSink(settings.redis_read_model_url,
                                                                     ttl=settings.redis_read_model_ttl)))
    return Projections(found)
