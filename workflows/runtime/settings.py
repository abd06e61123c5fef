"""Configuration from environment variables (prefix `SAGA_`), with embedded defaults.

Without any variable set the system runs with no server at all: SQLite in `SAGA_DATA_DIR`
and kombu's filesystem transport in the same folder.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    data_dir: Path = Path(".saga-data")
    """Folder for the embedded defaults (SQLite file, filesystem broker)."""
    database_url: str | None = None
    """SQLAlchemy URL; default sqlite in data_dir.
    Production: postgresql+psycopg://... (psycopg 3; psycopg2 works too)"""
    broker_url: str | None = None
    """Celery broker URL; default kombu's filesystem transport in data_dir. redis://... or amqp://..."""
    dispatch_grace: float = 60.0
    """Seconds a dispatched message may wait in its queue, beyond the step's time limit,
    before the sweeper declares it lost: it times the step out (or, for the first step of a run
    nothing has reported on yet, sends its message once more)."""
    sweep_interval: float = 10.0
    """Seconds between two runs of the periodic sweeper (celery beat)."""
    redis_visibility_timeout: int = 3600
    """Must exceed the longest retry countdown and step time limit (docs: crash safety): `install` refuses
    a saga whose step's message may stay unacknowledged longer (`VisibilityTimeoutTooShort`)."""
    redis_visibility_check: bool = True
    """False only in a test rig that shortens the visibility timeout on purpose."""
    extra_modules: str = ""
    """Comma-separated modules the worker imports besides the examples (your sagas and steps)."""
    api_token: str | None = None
    """Bearer token the HTTP API requires, when set."""
    inline_steps: bool = True
    """Run a follow-up step on the same queue in the delivery that recorded the previous one,
    instead of publishing it (`workflows.orchestration.inline`)."""
    inline_max_steps: int = 16
    """At most this many steps run inline in one delivery."""
    async_threads: int = 10
    """Threads the asyncio client (`workflows.aio`) runs its store and broker calls on: at most this many
    at once in a process, the rest queue without holding the event loop. Default: the store's connection
    pool (5 + 5 overflow), so a burst waits for a thread rather than timing out on the pool."""
    tracing: Literal["off", "otel"] = "off"
    """`otel`: OpenTelemetry traces of every run (the `otel` extra: `pip install 'celery-sagas[otel]'`), exported
    as the standard `OTEL_*` variables say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, ...). `off`
    (the default): nothing of OpenTelemetry is imported. Docs: operations/observability."""
    tracing_park_after: float = 60.0
    """Seconds: a retry whose backoff is longer goes on in a new trace linked to the one before (as a
    wait, a scheduled start or an operator's action do), so no span stays open while a run is parked."""
    test_mode: bool = False
    """Enables the failure-injection endpoints of the HTTP API."""
    console_open: bool = False
    """Serve the console (/console) without a token when `api_token` is unset (a laptop). With a
    token set the console always asks for it; without a token and without this, /console is 404."""
    flower_url: str | None = None
    """Flower's address (http://127.0.0.1:5555): the console links each task to `<flower>/task/<task id>`."""
    console_search_keys: str = "order_id"
    """Comma-separated top-level input fields the console's search looks in (business keys)."""

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.absolute_data_dir() / 'sagas.db'}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def absolute_data_dir(self) -> Path:
        path = self.data_dir.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    def broker_folder(self) -> Path:
        folder = self.absolute_data_dir() / "broker"
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        return folder


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
