"""Configuration from environment variables (prefix `SAGA_`), with embedded defaults.

Without any variable set the system runs with no server at all: SQLite in `SAGA_DATA_DIR`
and kombu's filesystem transport in the same folder.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    """Must exceed the longest retry countdown and step time limit (see README): `install` refuses
    a saga whose step's message may stay unacknowledged longer (`VisibilityTimeoutTooShort`)."""
    redis_visibility_check: bool = True
    """False only in a test rig that shortens the visibility timeout on purpose."""
    extra_modules: str = ""
    """Comma-separated modules the worker imports besides the examples (your sagas and steps)."""
    api_token: str | None = None
    """Bearer token the HTTP API requires, when set."""
    test_mode: bool = False
    """Enables the failure-injection endpoints of the HTTP API."""

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
