"""After-commit projections: Kafka `saga-events`, the Redis read model, and your own (`Projection`).

See `workflows.projections.base` and the guide page "Kafka and Redis"."""
from workflows.projections.base import PROJECTION_GRACE, Projection, Projections, Sink

__all__ = ["PROJECTION_GRACE", "Projection", "Projections", "Sink"]
