"""Delivering what needs a person: recorded once, logged, POSTed to the webhook until it answers 2xx.

    transition (FAILED, dead letter, lost worker)        the sweeper (no progress past the bound)
        -> the `notify` projection's record, written             |
           pending in the transition's own atomic write          |
        -> after commit (or the sweeper's resend):               |
           `NotificationSink.send` -> `Notifier.record` <--------+
                 saga_notifications row (dedup key: once), a log line
        -> `Notifier.deliver`: the webhook, signed; every attempt kept; a failure due again after a
           backoff (doubling from `notify_retry_initial` to `notify_retry_max`), which
           `Notifier.deliver_due` (each sweep) sends

So a notice is delivered at least once after its transition committed, and a receiver drops a
repeat by its id (`X-Saga-Notification-Id`). A duplicate step message makes no transition (the
run's version guards it), so no notice.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from workflows.core.transition import ProjectedRecord
from workflows.notifications.webhook import WebhookTarget
from workflows.store.base import Notices
from workflows.store.notifications import LOGGED, PENDING, NewNotification

log = logging.getLogger("workflows.notifications")

NOTIFY = "notify"
"""The projection's name (its pending records' keys start with it)."""


class Notifier:
    """The configured targets: a log line (`log_line`) and the webhook (`webhook`, None: none)."""

    def __init__(self, store: Callable[[], Notices], clock: Callable[[], datetime], *,
                 webhook: WebhookTarget | None = None, log_line: bool = True, retry_initial: float = 10.0,
                 retry_max: float = 900.0, link: str = "") -> None:
        self._store, self.clock, self.webhook, self.log_line = store, clock, webhook, log_line
        self.retry_initial, self.retry_max, self.link = retry_initial, retry_max, link

    @property
    def store(self) -> Notices:
        return self._store()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next attempt after `attempts` failed ones."""
        return float(min(self.retry_max, self.retry_initial * 2 ** max(attempts - 1, 0)))

    def record(self, bodies: Sequence[dict[str, Any]]) -> list[str]:
        """Record each notice not recorded yet (and log it); returns the ids recorded now."""
        now = self.clock()
        new = self.store.record_notifications(
            [NewNotification(b["id"], b["kind"], b["saga_id"], b["saga_type"], b) for b in bodies],
            state=PENDING if self.webhook is not None else LOGGED, now=now)
        if self.log_line:
            fresh = set(new)
            for b in bodies:
                if b["id"] in fresh:
                    log.error("saga needs a person: %s of %s %s: %s", b["kind"], b["saga_type"], b["saga_id"],
                              b["reason"], extra={"saga_id": b["saga_id"], "notification_id": b["id"],
                                                  "notification_kind": b["kind"]})
                    self.store.notification_attempted(b["id"], target="log", at=now, ok=True)
        return new

    def deliver(self, ids: Sequence[str], now: datetime | None = None) -> list[str]:
        """POST each of `ids` that is due and not taken by another deliverer; returns those delivered."""
        if self.webhook is None:
            return []
        now = now or self.clock()
        lease = now + timedelta(seconds=max(60.0, 2 * self.webhook.timeout))
        delivered = []
        for nid in ids:
            n = self.store.claim_notification(nid, now, lease)
            if n is None:
                continue  # delivered, not due, or another deliverer has it
            answer = self.webhook.post(n.body, str(int(now.timestamp())))
            self.store.notification_attempted(
                nid, target="webhook", at=now, ok=answer.ok, status_code=answer.status_code, error=answer.error,
                next_attempt_at=None if answer.ok else now + timedelta(seconds=self.backoff(n.attempts + 1)))
            if answer.ok:
                delivered.append(nid)
            else:
                log.warning("notification %s not delivered (attempt %d): %s", nid, n.attempts + 1, answer.error,
                            extra={"saga_id": n.saga_id, "notification_id": nid})
        return delivered

    def deliver_due(self, now: datetime, limit: int = 100) -> list[str]:
        """The sweeper's part: every notification whose next attempt is due."""
        if self.webhook is None:
            return []
        return self.deliver(self.store.due_notifications(now, limit), now)


class NotificationSink:
    """The `notify` projection's sink: its records hold a transition's notices; sending them is
    recording them (once) and delivering them. A record counts as sent once its notices are
    recorded: from then on their delivery is the notifications table's (retries, attempts)."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def send(self, records: Sequence[ProjectedRecord]) -> Sequence[str]:
        new = self.notifier.record([n for r in records for n in r.body["notices"]])
        self.notifier.deliver(new)
        return [r.id for r in records]

    def close(self) -> None:
        pass
