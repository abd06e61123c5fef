"""The read model's sink: each run as a Redis hash `saga:<id>` (`HGETALL saga:order-123`).

A record replaces the hash's fields only if it is newer than what the hash holds (`run_version`,
checked in one script on the server): a resend, or a sweeper's late repair, never moves a run
back. A terminal run's hash expires after `ttl` seconds. All records of a send go in one
pipeline (one round trip). A read model, eventually consistent: the database is the record, and
`sagas redis-rebuild` writes every hash again from it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workflows.core.transition import ProjectedRecord

KEY_PREFIX = "saga:"

# KEYS[1] the hash; ARGV[1] run version, ARGV[2] expiry seconds (0: none), ARGV[3..] field, value...
_NEWER = """
local held = redis.call('HGET', KEYS[1], 'run_version')
if held and tonumber(held) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[1], ARGV[2]) else redis.call('PERSIST', KEYS[1]) end
return 1
"""


def key_of(saga_id: str) -> str:
    return f"{KEY_PREFIX}{saga_id}"


class RedisHashSink:
    def __init__(self, url: str, *, ttl: int = 86400) -> None:
        import redis  # Celery's redis transport brings it
        self.client: Any = redis.Redis.from_url(url)
        self.ttl = ttl

    def send(self, records: Sequence[ProjectedRecord]) -> Sequence[str]:
        pipe = self.client.pipeline(transaction=False)
        for r in records:
            self.write(r.saga_id, r.body, pipe)
        pipe.execute()
        return [r.id for r in records]

    def write(self, saga_id: str, fields: dict[str, Any], client: Any = None) -> Any:
        """Replace `saga:<saga_id>` by `fields` unless the hash holds a newer run version."""
        ttl = self.ttl if fields.get("terminal") == "1" and self.ttl > 0 else 0
        args = [fields["run_version"], ttl, *(x for kv in fields.items() for x in kv)]
        # EVAL, not a registered script: in a pipeline redis-py checks and loads a script first (two
        # round trips more); the script is a few hundred bytes
        return (client or self.client).eval(_NEWER, 1, key_of(saga_id), *args)

    def close(self) -> None:
        self.client.close()
