"""The HTTP API this deployment serves: `uvicorn api:app --port 8000` (or `make api`).

The library's generic API (`workflows.interfaces.api.create_app`) with the example shop's
endpoints (`tasks/shop_api.py`) mounted on it. It imports `worker` first: the same Celery app,
runtime and `SAGA_*` settings as the workers.
"""
import worker  # builds the Celery app and installs the saga runtime
from tasks.shop_api import routers

from workflows.interfaces.api import create_app

settings = worker.runtime.settings
app = create_app(settings, routers=routers(settings))
