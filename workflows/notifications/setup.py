"""The notifier a process runs with, from its settings (`Runtime.notifier`)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from workflows.core.errors import DefinitionError
from workflows.notifications.notifier import Notifier
from workflows.notifications.webhook import WebhookTarget
from workflows.runtime.settings import Settings
from workflows.store.base import Notices


def webhook_of(settings: Settings) -> WebhookTarget | None:
    """The webhook when `notify_webhook_url` is set. Its secret is required (an unsigned notification
    could be forged by anyone who finds the URL): `workflows.install` checks it when a worker starts."""
    if not settings.notify_webhook_url:
        return None
    if settings.notify_webhook_secret is None or not settings.notify_webhook_secret.get_secret_value():
        raise DefinitionError("SAGA_NOTIFY_WEBHOOK_URL is set but SAGA_NOTIFY_WEBHOOK_SECRET is not: set the "
                              "secret the webhook's HMAC-SHA256 signature is made with (the receiver verifies it)")
    return WebhookTarget(settings.notify_webhook_url, settings.notify_webhook_secret.get_secret_value(),
                         settings.notify_webhook_timeout)


def notifier_from(settings: Settings, store: Callable[[], Notices], clock: Callable[[], datetime]) -> Notifier:
    """A log line (`notify_log`) and the webhook (`webhook_of`)."""
    return Notifier(store, clock, webhook=webhook_of(settings), log_line=settings.notify_log,
                    retry_initial=settings.notify_retry_initial, retry_max=settings.notify_retry_max,
                    link=settings.notify_link)
