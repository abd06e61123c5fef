"""SQLAlchemy 2 typed models of the saga store. The same tables on PostgreSQL and SQLite.

Only the store (`workflows.store`) imports this module."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from workflows.store.column_types import BigId as BigId
from workflows.store.column_types import JSONType as JSONType
from workflows.store.column_types import UTCDateTime as UTCDateTime


class Base(DeclarativeBase):
    if TYPE_CHECKING:  # every model here maps a Table; SQLAlchemy annotates `__table__` as any FromClause
        __table__: ClassVar[Table]

    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSONType}


class SagaRow(Base):
    """One saga run. `version` guards every transition (optimistic lock)."""

    __tablename__ = "sagas"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_sagas_idempotency_key"),
        Index("ix_sagas_state_type", "state", "saga_type"),
        Index("ix_sagas_deadline", "deadline_at"),
        # the console's list (revision 0008): newest first, by state or type; the business-key search
        Index("ix_sagas_created", "created_at", "id"),
        Index("ix_sagas_state_created", "state", "created_at"),
        Index("ix_sagas_type_created", "saga_type", "created_at"),
        Index("ix_sagas_input", "input", postgresql_using="gin", postgresql_ops={"input": "jsonb_path_ops"},
              postgresql_with={"fastupdate": "off"}).ddl_if(dialect="postgresql"),  # revision 0009
        Index("ix_sagas_state_deadline", "state", "deadline_at"),
        Index("ix_sagas_parent", "parent_id"),
        Index("ix_sagas_type_version_state", "saga_type", "saga_version", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    saga_type: Mapped[str] = mapped_column(String(100))
    style: Mapped[str] = mapped_column(String(20), default="orchestrated")
    state: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer, default=0)
    saga_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    """The version of the saga's definition the run started with (not the lock counter `version`)."""
    input: Mapped[dict[str, Any]] = mapped_column(JSONType)
    input_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    caused_by: Mapped[str | None] = mapped_column(String(200))
    """Task id of the message whose handling made the current version. Lets a redelivered
    message find out that its own transition already committed."""
    failure_reason: Mapped[str | None] = mapped_column(Text)
    deadline_at: Mapped[datetime | None]
    """A saga deadline (RUNNING, WAITING), or when a SCHEDULED run starts."""
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    signals_pending: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Signals kept for a wait not begun yet (`saga_signals` rows not consumed): the run's read
    loads them only when there are some, so a run without signals is still read in one statement."""
    parent_id: Mapped[str | None] = mapped_column(String(64))
    """A child run: the run whose `Child` step started it (no foreign key: a choreography's
    runs and the parent's share the table, and a run is never deleted before its children)."""
    parent_step: Mapped[str | None] = mapped_column(String(100))
    """A child run: the name of that step of the parent."""
    started_by: Mapped[str | None] = mapped_column(String(100))
    """The name of the credential whose API call started the run (revision 0010; NULL: started by
    code, the CLI or an unauthenticated API). A service credential reads and signals only its own."""
    trace_context: Mapped[str | None] = mapped_column(String(64))
    """With tracing on, the `traceparent` of the run's current trace segment (`RunState.trace`)."""

    steps: Mapped[list[StepRow]] = relationship(
        back_populates="saga", order_by="StepRow.index", cascade="all, delete-orphan")

    __mapper_args__ = {"version_id_col": version}


class StepRow(Base):
    __tablename__ = "saga_steps"
    __table_args__ = (
        UniqueConstraint("saga_id", "name", name="uq_saga_steps_name"),
        Index("ix_saga_steps_deadline", "status", "deadline_at"),
    )

    saga_id: Mapped[str] = mapped_column(ForeignKey("sagas.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(24))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    compensation_attempts: Mapped[int] = mapped_column(Integer, default=0)
    redeliveries: Mapped[int] = mapped_column(Integer, server_default="0")
    """Times an action message of this step came back after its worker died (or was restored by the
    broker), counted before the function runs again. Written only by `count_redelivery`, never by a
    transition: 0 on the happy path, which pays nothing for it."""
    compensation_redeliveries: Mapped[int] = mapped_column(Integer, server_default="0")
    """The same for the step's compensation messages."""
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(200))
    """Celery task id of the message in flight for this step (kept through retries)."""
    eta: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    compensated_at: Mapped[datetime | None]

    saga: Mapped[SagaRow] = relationship(back_populates="steps")


class EventRow(Base):
    """Append-only history of a saga: every transition, attempt, and operator action."""

    __tablename__ = "saga_events"
    __table_args__ = (Index("ix_saga_events_saga", "saga_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    saga_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(60))
    step: Mapped[str | None] = mapped_column(String(100))
    attempt: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class SignalRow(Base):
    """A signal sent to a run: the record of who sent what, and which wait consumed it."""

    __tablename__ = "saga_signals"
    __table_args__ = (UniqueConstraint("saga_id", "idempotency_key", name="uq_saga_signals_key"),
                      Index("ix_saga_signals_saga", "saga_id", "received_at"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    saga_id: Mapped[str] = mapped_column(ForeignKey("sagas.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    """Unique per saga: the same key again is the same signal."""
    who: Mapped[str] = mapped_column(String(200))
    received_at: Mapped[datetime]
    consumed_by: Mapped[str | None] = mapped_column(String(100))
    """The wait that took it; NULL while it is kept for a wait not begun yet."""
    consumed_at: Mapped[datetime | None]


class DeadLetterRow(Base):
    """A task whose retries ran out, with all it takes to inspect and redrive it."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_status", "status", "created_at"),
                      Index("ix_dead_letters_saga", "saga_id"),
                      Index("ix_dead_letters_unsent", "sent_at", "created_at"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    saga_id: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[str | None] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    """'action', 'compensation' or 'event' (a choreography handler)."""
    task_name: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str | None] = mapped_column(String(100))
    args: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    exception: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default="OPEN")
    """OPEN, REDRIVEN or DISCARDED."""
    resolution: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    """When its copy reached the broker's `dead_letter` queue. NULL: still to send (after commit,
    or by the sweeper when the writer died first)."""


class WorkerRow(Base):
    """A worker's heartbeat: the saga versions it holds. Written when it starts, refreshed on a
    timer, deleted when it stops; a row not refreshed for a while is a worker gone."""

    __tablename__ = "saga_workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The Celery node name and its pid (`celery@host:1234`)."""
    versions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """{saga name: {version (as a string): fingerprint}}."""
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]


class ParkedStepRow(Base):
    """A step message no worker took (handed on `MAX_HANDOFFS` times): its worker dropped it and left
    this row; the sweeper dispatches the step again once a live worker holds its saga version."""

    __tablename__ = "saga_parked_steps"

    saga_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The dispatch that was parked: a step dispatched since (another task id) makes the row stale."""
    saga_type: Mapped[str] = mapped_column(String(100))
    saga_version: Mapped[int] = mapped_column(Integer)
    step: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    parked_at: Mapped[datetime]


class DefinitionRow(Base):
    """Each (saga, version) a worker has held, with its shape: a worker whose code has another
    shape under a version recorded here refuses to start (`VersionConflict`)."""

    __tablename__ = "saga_definitions"

    saga_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    saga_version: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    shape: Mapped[list[Any]] = mapped_column(JSONType)
    first_seen: Mapped[datetime]


class ProcessedEventRow(Base):
    """(consumer, event id) pairs already handled: a duplicate insert means 'already done'."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    saga_id: Mapped[str | None] = mapped_column(String(64))
    processed_at: Mapped[datetime]


class OutboxRow(Base):
    """One event to deliver to its consumers. Written with the effect that caused it; relayed to
    the broker right after commit, or by the sweeper when the publisher died before that."""

    __tablename__ = "event_outbox"
    __table_args__ = (
        Index("ix_event_outbox_unsent", "sent_at", "id"),
        Index("ix_event_outbox_saga", "saga_id", "id"),
        Index("ix_event_outbox_causation", "causation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64))
    """Not unique: a redrive re-sends the same event to one consumer in a row of its own."""
    saga_id: Mapped[str] = mapped_column(String(64))
    saga_type: Mapped[str] = mapped_column(String(100))
    event_type: Mapped[str] = mapped_column(String(100))
    causation_id: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(100))
    """The service whose handler published it ('client' outside any handler)."""
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The full envelope, as sent (wire form)."""
    targets: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    """Consumers (service names) to deliver to, fixed when written."""
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
    """When the relay published it to every target. NULL: still to send."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Failed relay attempts (broker unreachable)."""
    last_error: Mapped[str | None] = mapped_column(Text)


# ------------------------------------------------------------------ access (revision 0010)
# No token is stored: only its keyed SHA-256 lookup hash (`workflows.operations.credentials`).


class CredentialRow(Base):
    """A person's or a service's API token, with its role. Revoked rows are kept (the audit names them)."""

    __tablename__ = "credentials"
    __table_args__ = (
        Index("uq_credentials_token_hash", "token_hash", unique=True),
        # one active credential per name; a revoked one's name may be given again
        Index("uq_credentials_active_name", "name", unique=True, postgresql_where=text("revoked_at IS NULL"),
              sqlite_where=text("revoked_at IS NULL")),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64))
    """HMAC-SHA256 of the token (key: `SAGA_TOKEN_KEY`), hex. The token itself is shown once, never stored."""
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AccessAuditRow(Base):
    """Append-only access log: every action through the API or the console (allowed or refused),
    every login (succeeded, failed, locked out) and every change to a credential."""

    __tablename__ = "access_audit"
    __table_args__ = (Index("ix_access_audit_at", "at"),
                      Index("ix_access_audit_login", "action", "outcome", "at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    who: Mapped[str] = mapped_column(String(100))
    """The authenticated name (for a failed login: the name typed, or empty)."""
    role: Mapped[str | None] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str | None] = mapped_column(String(200))
    outcome: Mapped[str] = mapped_column(String(20))
    """allowed, refused, failed, locked, created, revoked, expired."""
    address: Mapped[str | None] = mapped_column(String(100))
    note: Mapped[str | None] = mapped_column(String(200))
    """What the caller wrote about itself (`X-Operator`, the console's note): never the identity."""


class ConsoleSessionRow(Base):
    """A console login with a credential. The cookie holds the session's secret; this row its hash."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    credential_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


# ------------------------------------------------------------------ projections (revision 0011)


class ProjectionRow(Base):
    """A record an after-commit projection (`workflows.projections`) still has to send: written in
    the transition's own atomic write, deleted once sent; the sweeper sends those a crash left."""

    __tablename__ = "projection_outbox"
    __table_args__ = (Index("ix_projection_outbox_created", "created_at"),)

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The record's dedup key (`<projection>:<saga id>:<run version>`)."""
    projection: Mapped[str] = mapped_column(String(60))
    saga_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime]


# ------------------------------------------------------------------ notifications (revision 0013)


class NotificationRow(Base):
    """An event that needs a person (a FAILED run, a dead letter, a lost worker, no progress past
    the saga's bound), recorded once by its dedup key, and its delivery to the webhook target."""

    __tablename__ = "saga_notifications"
    __table_args__ = (Index("ix_saga_notifications_due", "state", "next_attempt_at"),
                      Index("ix_saga_notifications_saga", "saga_id", "created_at"))

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The dedup key: `<kind>:<saga id>:<run version or dead letter id>`. Recorded once."""
    kind: Mapped[str] = mapped_column(String(30))
    saga_id: Mapped[str] = mapped_column(String(64))
    saga_type: Mapped[str] = mapped_column(String(100))
    body: Mapped[dict[str, Any]] = mapped_column(JSONType)
    """The webhook's JSON body, as sent (and signed)."""
    state: Mapped[str] = mapped_column(String(20))
    """PENDING (the webhook has not answered 2xx yet), DELIVERED, or LOGGED (no webhook configured)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]


class NotificationAttemptRow(Base):
    """One delivery attempt of a notification to one target: when, and the answer (a status code)
    or the error."""

    __tablename__ = "saga_notification_attempts"
    __table_args__ = (Index("ix_saga_notification_attempts_notification", "notification_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    notification_id: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(20))
    at: Mapped[datetime]
    ok: Mapped[bool]
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
