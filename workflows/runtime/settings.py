"""Configuration from environment variables (prefix `SAGA_`), with embedded defaults.

Without any variable set the system runs with no server at all: SQLite in `SAGA_DATA_DIR`
and kombu's filesystem transport in the same folder.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="ignore")

    data_dir: Path = Path(".saga-data")
    """Folder for the embedded defaults (SQLite file, filesystem broker)."""
    database_url: str | None = None
    """SQLAlchemy URL; default sqlite in data_dir.
    Production: postgresql+psycopg://... (psycopg 3; psycopg2 works too). Through PgBouncer in
    transaction mode (before 1.21, or without `max_prepared_statements`) add `?prepare_threshold=none`:
    psycopg then prepares no statement (docs: deploy, PgBouncer)."""
    broker_url: str | None = None
    """Celery broker URL; default kombu's filesystem transport in data_dir. redis://..., amqp://..., or
    Redis with Sentinel: sentinel://host1:26379;sentinel://host2:26379;sentinel://host3:26379 (every
    sentinel, separated by `;`; the master's database as a path, sentinel://host1:26379/2), with
    `broker_master_name`."""
    broker_master_name: str | None = None
    """With a sentinel:// broker URL: the name the sentinels monitor the master under (`sentinel monitor
    <name> ...`). Required there; the worker refuses to start without it."""
    broker_quorum_queues: bool = False
    """With an amqp:// broker URL: declare the step, compensation, orchestrator, event and dead-letter
    queues as RabbitMQ quorum queues (replicated; RabbitMQ 3.8 or newer) on topic exchanges, so countdowns
    (retries, hand-offs) wait in RabbitMQ's native delayed delivery, not in a worker. Queues already
    declared as classic must be deleted (drained) first: RabbitMQ does not change a queue's type."""
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
    api_token: str | None = Field(default=None, repr=False)
    """Single-token mode (a laptop, a demo): this one bearer token opens the HTTP API and the console
    as an admin named `api_token_name`. Everyone who knows it is the same person to the audit; a team
    uses per-person credentials instead (`auth_credentials`, docs: operations/security)."""
    api_token_name: str = "token"
    """The name the single token's caller is recorded under in the history and the access audit."""
    auth_credentials: bool = False
    """Require a credential made with `sagas credentials create` (a bearer token with a name and a
    role: viewer, operator, service, admin) on the HTTP API and the console. With `api_token` set as
    well, both are accepted. Neither set: the API is open (a laptop) and the console is off."""
    token_key: SecretStr | None = None
    """Key of the credentials' lookup hash (HMAC-SHA256 of the token): with it, a copy of the database
    alone cannot even test a guessed token. The same on every API process and wherever `sagas
    credentials` runs; changing it invalidates every credential. Unset: a fixed key."""
    field_keys: SecretStr | None = None
    """Keys of the sealed (sensitive) fields: `kid:<base64 of 32 bytes>,...`, the first the current one
    (new seals), the others still opened (rotation: `sagas rotate-key` re-seals into the first). Required
    wherever a saga declaring `sensitive` fields is started or run on a server database; with SQLite
    and none set, a key is made once in `data_dir` (a laptop). Docs: operations/security."""
    field_hash_key: SecretStr | None = None
    """Key of the sealed fields' keyed hash (HMAC-SHA256, base64 of 32 bytes), what an idempotency key
    compares instead of the clear value. Not rotated with `field_keys`: changing it makes a start
    retried with the same idempotency key look like other input. Required with `field_keys`."""
    trusted_proxies: str = ""
    """Comma-separated addresses of reverse proxies (oauth2-proxy style) trusted to name the user in
    `proxy_user_header`. The name must be an active credential's; its role applies. Empty: off."""
    proxy_user_header: str = "X-Forwarded-User"
    """The header a trusted proxy names the authenticated user in (ignored from any other address)."""
    login_max_failures: int = 5
    """Failed console logins, per name and per address, within `login_lockout_seconds` before the
    console refuses further attempts from them (429) until the window has passed."""
    login_lockout_seconds: float = 900.0
    """The window failed console logins are counted over, and how long a lockout lasts at most."""
    console_session_hours: float = 12.0
    """How long a console login with a credential lasts (revoking the credential ends it at once)."""
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
    kafka_bootstrap_servers: str | None = None
    """Kafka brokers (`host:port,...`; the `kafka` extra): when set, every transition is published on
    `kafka_events_topic` after its commit, and `sagas kafka-commands` consumes `kafka_commands_topic`."""
    kafka_events_topic: str = "saga-events"
    """The topic of the saga events (one per transition, keyed by saga id; docs: Kafka and Redis)."""
    kafka_commands_topic: str = "saga-commands"
    """The topic `sagas kafka-commands` consumes: start, signal, cancel."""
    kafka_commands_group: str = "saga-commands"
    """The consumer group of `sagas kafka-commands` (its offsets: a restarted consumer resumes)."""
    kafka_command_aliases: str = ""
    """Comma-separated `Name=saga_type` pairs: a command named `Name` starts that saga type
    (`StartOrder=order_fulfillment` takes the seed's `{"sagaId": "123", "command": "StartOrder"}`)."""
    redis_read_model_url: str | None = None
    """Redis URL of the read model (`HGETALL saga:<id>`): when set, each run's hash is updated after each
    commit; `sagas redis-rebuild` writes it again from the database."""
    redis_read_model_ttl: int = 86400
    """Seconds a terminal run's hash is kept in the read model (0: kept for ever)."""
    projection_grace: float = 10.0
    """Seconds a projection record (a Kafka event, a read model update) is left to the process that
    committed it before the sweeper sends it."""
    stuck_after: float = 3600.0
    """Seconds a RUNNING or COMPENSATING run may stay unchanged before it needs a person: the sweeper
    records a `no_progress` notification (a saga type's own `Saga(..., stuck_after=...)` wins). 0: off."""
    notify_log: bool = True
    """Log every notification (a FAILED run, an open dead letter, a lost worker, no progress past the
    bound) once, at ERROR on the logger `workflows.notifications` (docs: operations/alerts)."""
    notify_webhook_url: str | None = None
    """POST every notification, as signed JSON, to this URL (retried with backoff until it answers 2xx)."""
    notify_webhook_secret: SecretStr | None = Field(default=None, repr=False)
    """The HMAC-SHA256 key of the webhook's `X-Saga-Signature` (required with `notify_webhook_url`)."""
    notify_webhook_timeout: float = 5.0
    """Seconds one webhook attempt may take."""
    notify_retry_initial: float = 10.0
    """Seconds before the webhook is tried again after its first failed attempt; doubling after each."""
    notify_retry_max: float = 900.0
    """The longest wait between two webhook attempts."""
    notify_link: str = ""
    """The console's address as the receiver reaches it (`https://ops.example.com/console`): a
    notification's `link` is `<notify_link>/sagas/<saga id>`. Empty: the path `/console/sagas/<id>`."""

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
