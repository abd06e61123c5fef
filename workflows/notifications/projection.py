"""The `notify` projection: a transition's notices (`notices.transition_notices`) written pending in
its own atomic write, recorded and delivered after its commit (`notifier.NotificationSink`), or by
the sweeper's resend when the process died between the two."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from workflows.core.transition import Transition
from workflows.notifications.notices import transition_notices
from workflows.notifications.notifier import NOTIFY, NotificationSink, Notifier
from workflows.projections.base import Projection


def notify_projection(notifier: Notifier) -> Projection:
    def derive(t: Transition, now: datetime) -> dict[str, Any] | None:
        notices = transition_notices(t, now, notifier.link)
        return {"notices": notices} if notices else None

    return Projection(NOTIFY, derive, NotificationSink(notifier))
