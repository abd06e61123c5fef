"""kombu's Redis transport, with undecodable messages dead-lettered instead of stopping the worker.

kombu's Redis channel pops a message off its list (BRPOP) and only then decodes its JSON envelope;
a body that is not JSON (a producer's bug, anyone who can write to the broker) raises out of the
worker's event loop and ends the worker's main process ("Unrecoverable error: JSONDecodeError"):
one bad message takes a whole pool down, and is lost with it. Here the decoding error is caught
where it happens: the raw text is kept as a dead letter (kind "message", in the table and on the
`dead_letter` queue) with the reason, and the worker goes on with its next message. Chosen for
redis:// and rediss:// URLs in `celeryconfig.py` (kombu's transport aliases), and for sentinel://
URLs (`SentinelTransport`: kombu's Sentinel transport, which asks the sentinels for the master and
follows a failover, with the same dead-lettering).
"""
from __future__ import annotations

import json
import logging
from typing import Any

from kombu.transport import redis

from workflows.runtime.poison import dead_letter_message

log = logging.getLogger("workflows.broker")


def dead_letter_undecodable(raw: str, reason: str) -> None:
    """Keep a message no worker can decode as a dead letter (never raises: the worker must go on)."""
    dead_letter_message(raw, reason)


class Channel(redis.Channel):
    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]  # kombu is untyped
        except json.JSONDecodeError as e:  # popped already: keep it, then take the next one
            dead_letter_undecodable(e.doc, f"the message body is not JSON: {e}")
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]  # kombu is untyped
        except json.JSONDecodeError as e:
            dead_letter_undecodable(e.doc, f"the message body on queue {queue!r} is not JSON: {e}")
            raise redis.Empty() from None


class Transport(redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        """JSON that is not a kombu envelope (`{}`, `[1]`, `"x"`) would fail a few lines further on,
        where kombu reads its properties, ending the worker just the same: keep it too."""
        properties = message.get("properties") if isinstance(message, dict) else None
        if not isinstance(properties, dict) or "delivery_tag" not in properties:
            dead_letter_undecodable(json.dumps(message, default=str),
                                    f"the message on queue {queue!r} is not a kombu message envelope")
            return
        super()._deliver(message, queue)  # type: ignore[no-untyped-call]  # kombu is untyped


class SentinelChannel(Channel, redis.SentinelChannel):
    """kombu's Sentinel channel (connections to whichever server the sentinels name master) with the
    dead-lettering of `Channel`."""


class SentinelTransport(Transport, redis.SentinelTransport):
    Channel = SentinelChannel
