"""Structured logs: every line a worker writes about a saga carries its saga id and step."""
from __future__ import annotations

import json
import logging
import os
import sys


class SagaContextFilter(logging.Filter):
    """Fill `saga_id` and `step` from the running Celery task's arguments when not given."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "saga_id"):
            record.saga_id, record.step = _from_current_task()
        if not hasattr(record, "step"):
            record.step = None
        return True


def _from_current_task() -> tuple[str | None, str | None]:
    try:
        from celery import current_task
    except ImportError:  # pragma: no cover
        return None, None
    task = current_task
    if not task or not getattr(task, "request", None) or not task.request.args:
        return None, None
    args = list(task.request.args)
    if task.name.startswith("saga."):
        return (str(args[0]) if args else None), None
    return str(args[0]), (str(args[1]) if len(args) > 1 else None)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "saga_id": getattr(record, "saga_id", None), "step": getattr(record, "step", None),
               "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str | None = None) -> None:
    """JSON lines on stderr for the `workflows` loggers (set SAGA_LOG_LEVEL to change the level)."""
    logger = logging.getLogger("workflows")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SagaContextFilter())
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("SAGA_LOG_LEVEL", "INFO"))
    logger.propagate = False
