"""Celery settings of this deployment: the library's (`workflows.celeryconfig`, all from SAGA_*
variables with embedded defaults, see README) and the example shop's service queues.

Without any variable: kombu's filesystem transport in SAGA_DATA_DIR (no server needed).
Production: SAGA_BROKER_URL=redis://... or amqp://..., or sentinel://...;sentinel://... with
SAGA_BROKER_MASTER_NAME (Redis with Sentinel); SAGA_BROKER_QUORUM_QUEUES=1 on RabbitMQ (quorum queues,
declared by workflows.install).
"""
from kombu import Queue

from workflows.celeryconfig import *  # noqa: F403

# One queue for the orchestrator, one per service (each pool scales on its own).
task_queues = [Queue(name) for name in ("saga", "inventory", "payment", "shipping", "notification")]
