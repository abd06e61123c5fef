"""Runs that need a person, recorded once and delivered: a log line and a signed webhook.

See `workflows.notifications.notifier` and the docs page "Alerts and notifications"."""
from workflows.notifications.notices import DEAD_LETTER, FAILED, KINDS, LOST_WORKER, NO_PROGRESS
from workflows.notifications.notifier import Notifier
from workflows.notifications.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookTarget, sign, verify

__all__ = ["DEAD_LETTER", "FAILED", "KINDS", "LOST_WORKER", "NO_PROGRESS", "SIGNATURE_HEADER", "TIMESTAMP_HEADER",
           "Notifier", "WebhookTarget", "sign", "verify"]
