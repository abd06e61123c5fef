"""The webhook target: a notice POSTed as JSON, signed with HMAC-SHA256.

Headers of every request:

    Content-Type: application/json
    X-Saga-Notification-Id: <the dedup key>          drop a request whose id you already handled
    X-Saga-Timestamp: <unix seconds>                 refuse one too old (a replay)
    X-Saga-Signature: sha256=<hex>                   HMAC-SHA256(secret, "<timestamp>." + raw body)

A receiver verifies with `verify(secret, timestamp, body, signature)` (or the same three lines:
docs, operations/alerts). Any 2xx answer counts as delivered; anything else, or no answer within
the timeout, is a failed attempt (retried with backoff). Plain `urllib`: no extra dependency.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "X-Saga-Notification-Id", "X-Saga-Timestamp", "X-Saga-Signature"


def encode(body: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(secret: str, timestamp: str, raw: bytes) -> str:
    """The `X-Saga-Signature` value of `raw` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, raw: bytes, signature: str) -> bool:
    """True if `signature` is the one `sign` makes (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, timestamp, raw), signature)


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code, or the error that stood in for one."""

    ok: bool
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: str
    timeout: float = 5.0

    def post(self, body: dict[str, Any], timestamp: str) -> Answer:
        raw = encode(body)
        request = urllib.request.Request(self.url, data=raw, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "celery-sagas-notify/1",
            ID_HEADER: str(body.get("id", "")), TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, raw)})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (a configured URL)
                code = int(response.status)
        except urllib.error.HTTPError as e:  # an answer, not 2xx
            return Answer(False, e.code, f"HTTP {e.code} {e.reason}"[:500])
        except (OSError, ValueError) as e:  # refused, unreachable, timed out, a bad URL
            return Answer(False, None, f"{type(e).__name__}: {e}"[:500])
        return Answer(200 <= code < 300, code, None if 200 <= code < 300 else f"HTTP {code}")
