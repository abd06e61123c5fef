"""The two choreographed examples, on the example services' own tables.

- `order_sequential` (seed 000): an order service turns each outcome into the next command.
- `order_parallel` (seed 001): payment and inventory react to OrderCreated at once; the order
  service joins them, and each failure is undone by the service that already acted.
- `order_checkout` (the hybrid): OrderPlaced starts the orchestrated saga `order_paid_fulfillment`,
  and the payment service's PaymentSettled answers that saga's wait.
"""
from .checkout import checkout
from .parallel import parallel
from .sequential import sequential

__all__ = ["checkout", "parallel", "sequential"]
