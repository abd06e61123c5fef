"""Reading the notifications (runs that needed a person) and their delivery attempts: the API's
`GET /api/notifications`, `sagas notifications`, the console's page."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from workflows.runtime.container import get_runtime


@dataclass(frozen=True)
class AttemptView:
    target: str
    """`webhook` or `log`."""
    at: datetime
    ok: bool
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class NotificationView:
    id: str
    """The dedup key (`<kind>:<saga id>:<run version or dead letter id>`), the webhook's `X-Saga-Notification-Id`."""
    kind: str
    saga_id: str
    saga_type: str
    state: str
    """PENDING (the webhook has not taken it yet), DELIVERED, or LOGGED (no webhook configured)."""
    reason: str
    attempts: int
    """Webhook attempts so far."""
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    """When the webhook is tried again (PENDING only)."""
    body: dict[str, Any]
    attempt_log: list[AttemptView]
    """Every attempt, oldest first (the log line's too)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("created_at", "delivered_at", "next_attempt_at"):
            d[k] = d[k].isoformat() if d[k] else None
        for a in d["attempt_log"]:
            a["at"] = a["at"].isoformat()
        return d


STATES = ("PENDING", "DELIVERED", "LOGGED")


def list_notifications(*, saga_id: str | None = None, state: str | None = None,
                       limit: int = 100) -> list[NotificationView]:
    """Newest first, each with its attempts; of one run, or in one state."""
    store = get_runtime().store
    found = store.notifications(saga_id=saga_id, state=state, limit=limit)
    attempts = store.notification_attempts([n.id for n in found])
    return [NotificationView(n.id, n.kind, n.saga_id, n.saga_type, n.state, str(n.body.get("reason", "")),
                             n.attempts, n.created_at, n.delivered_at,
                             n.next_attempt_at if n.state == "PENDING" else None, n.body,
                             [AttemptView(a.target, a.at, a.ok, a.status_code, a.error) for a in attempts[n.id]])
            for n in found]
