"""The Celery app: `celery -A worker worker` runs a worker, `celery -A worker beat` the sweeper."""
from celery import Celery

from workflows import install
from workflows.runtime.logs import configure_logging

app = Celery("sagas")
app.config_from_object("celeryconfig")
runtime = install(app, modules=["tasks", "tasks.sagas", "tasks.choreography"])
configure_logging()
