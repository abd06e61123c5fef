"""The access tables' rows (revision 0010): credentials, the access audit, console sessions.

Beside `models.py` (the same `Base`, so one metadata holds every saga table: the migrations'
environment imports this module too).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from workflows.store.models import Base, BigId

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
