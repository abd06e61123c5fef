"""Celery settings of this deployment: the library's (`workflows.celeryconfig`, all from SAGA_*
variables with embedded defaults, see README) and the example shop's service queues.

Without any variable: kombu's filesystem transport in SAGA_DATA_DIR (no server needed).
Production: SAGA_BROKER_URL=redis://... or amqp://...
"""
from kombu import Queue

from workflows.celeryconfig import *  # noqa: F403

# One queue for the orchestrator, one per service (each pool scales on its own).
task_queues = [Queue(name) for name in ("saga", "inventory", "payment", "shipping", "notification")]
