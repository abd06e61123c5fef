"""The example services of the order saga: inventory, payment, shipping, notification.

Each is a real service with its own tables, idempotent on the step's idempotency key (a unique
constraint: a duplicate means 'already done'), with switches to inject failures (`faults`).
"""
from . import inventory, notification, payment, shipping  # noqa: F401  (declare the step tasks)
