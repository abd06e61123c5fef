"""Imported first by the modules of the HTTP API and the console: without the `api` extra, a clear
error naming it instead of "No module named 'fastapi'"."""
from workflows._extras import require

require("api", "the HTTP API and console (workflows.interfaces.api)",
        "fastapi", "starlette", "jinja2", "prometheus_client", "multipart")
