"""The access tables' reads and writes: credentials, the audit, console sessions, who started a run.

`AccessStore(url)` on the saga store's database (its own engine, shared per URL). Every write is
one short transaction; none is on a step's path.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from workflows.core.errors import SagaError
from workflows.store.db import get_engine
from workflows.store.models import AccessAuditRow, ConsoleSessionRow, CredentialRow
from workflows.store.models import SagaRow

CREDENTIALS = CredentialRow.__table__
AUDIT = AccessAuditRow.__table__
SESSIONS = ConsoleSessionRow.__table__
SAGAS = SagaRow.__table__


class CredentialTaken(SagaError):
    """An active credential has that name already."""


@dataclass(frozen=True)
class CredentialRecord:
    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "created_at": _iso(self.created_at),
                "created_by": self.created_by, "expires_at": _iso(self.expires_at),
                "revoked_at": _iso(self.revoked_at)}


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    who: str
    role: str | None
    action: str
    target: str | None
    outcome: str
    address: str | None
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": _iso(self.at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_CRED_COLUMNS = (CREDENTIALS.c.id, CREDENTIALS.c.name, CREDENTIALS.c.role, CREDENTIALS.c.created_at,
                 CREDENTIALS.c.created_by, CREDENTIALS.c.expires_at, CREDENTIALS.c.revoked_at)


class AccessStore:
    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    # ------------------------------------------------------------ credentials

    def add_credential(self, record: CredentialRecord, token_hash: str) -> None:
        try:
            with self.engine.begin() as c:
                c.execute(insert(CREDENTIALS), {**record.__dict__, "token_hash": token_hash})
        except IntegrityError:
            raise CredentialTaken(f"an active credential named {record.name!r} exists: revoke it first "
                                  f"(sagas credentials revoke {record.name})") from None

    def credentials(self, *, include_revoked: bool = False) -> list[CredentialRecord]:
        q = select(*_CRED_COLUMNS).order_by(CREDENTIALS.c.name, CREDENTIALS.c.created_at)
        if not include_revoked:
            q = q.where(CREDENTIALS.c.revoked_at.is_(None))
        with self.engine.connect() as c:
            return [CredentialRecord(**r._mapping) for r in c.execute(q)]

    def credential_by_hash(self, token_hash: str) -> CredentialRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(*_CRED_COLUMNS).where(CREDENTIALS.c.token_hash == token_hash)).first()
        return CredentialRecord(**row._mapping) if row else None

    def active_by_name(self, name: str) -> CredentialRecord | None:
        with self.engine.connect() as c:
            row = c.execute(select(*_CRED_COLUMNS).where(CREDENTIALS.c.name == name,
                                                         CREDENTIALS.c.revoked_at.is_(None))).first()
        return CredentialRecord(**row._mapping) if row else None

    def revoke(self, name: str, now: datetime) -> CredentialRecord | None:
        """Revoke the active credential `name` and end its console sessions; None if there is none."""
        with self.engine.begin() as c:
            row = c.execute(update(CREDENTIALS).where(CREDENTIALS.c.name == name, CREDENTIALS.c.revoked_at.is_(None))
                            .values(revoked_at=now).returning(*_CRED_COLUMNS)).first()
            if row is not None:
                c.execute(delete(SESSIONS).where(SESSIONS.c.credential_id == row.id))
        return CredentialRecord(**row._mapping) if row else None

    def expire(self, name: str, at: datetime) -> CredentialRecord | None:
        with self.engine.begin() as c:
            row = c.execute(update(CREDENTIALS).where(CREDENTIALS.c.name == name, CREDENTIALS.c.revoked_at.is_(None))
                            .values(expires_at=at).returning(*_CRED_COLUMNS)).first()
        return CredentialRecord(**row._mapping) if row else None

    # ------------------------------------------------------------ the audit

    def audit(self, record: AuditRecord) -> None:
        values = {k: (v.replace("\x00", "")[:200] if isinstance(v, str) else v) for k, v in record.__dict__.items()}
        values["who"] = values["who"][:100]
        with self.engine.begin() as c:
            c.execute(insert(AUDIT), values)

    def audit_rows(self, *, who: str | None = None, outcome: str | None = None,
                   limit: int = 100) -> list[AuditRecord]:
        q = select(AUDIT).order_by(AUDIT.c.id.desc()).limit(limit)
        if who is not None:
            q = q.where(AUDIT.c.who == who)
        if outcome is not None:
            q = q.where(AUDIT.c.outcome == outcome)
        with self.engine.connect() as c:
            return [AuditRecord(**{k: v for k, v in r._mapping.items() if k != "id"}) for r in c.execute(q)]

    def failed_logins(self, *, name: str, address: str | None, since: datetime) -> tuple[int, int]:
        """Failed console logins since `since`: (for this name, from this address)."""
        failed = and_(AUDIT.c.action == "login", AUDIT.c.outcome == "failed", AUDIT.c.at > since)
        counts = []
        with self.engine.connect() as c:
            for column, value in ((AUDIT.c.who, name), (AUDIT.c.address, address)):
                counts.append(c.execute(select(func.count()).select_from(AUDIT).where(failed, column == value))
                              .scalar_one() if value else 0)
        return int(counts[0]), int(counts[1])

    # ------------------------------------------------------------ console sessions

    def add_session(self, id_hash: str, credential_id: str, now: datetime, expires_at: datetime) -> None:
        with self.engine.begin() as c:
            c.execute(delete(SESSIONS).where(SESSIONS.c.expires_at < now))  # the expired ones go on the way
            c.execute(insert(SESSIONS), {"id_hash": id_hash, "credential_id": credential_id, "created_at": now,
                                         "expires_at": expires_at})

    def session_credential(self, id_hash: str, now: datetime) -> CredentialRecord | None:
        """The active credential of an unexpired session, or None."""
        q = (select(*_CRED_COLUMNS).join_from(SESSIONS, CREDENTIALS, CREDENTIALS.c.id == SESSIONS.c.credential_id)
             .where(SESSIONS.c.id_hash == id_hash, SESSIONS.c.expires_at > now))
        with self.engine.connect() as c:
            row = c.execute(q).first()
        record = CredentialRecord(**row._mapping) if row else None
        return record if record is not None and record.active(now) else None

    def end_session(self, id_hash: str) -> None:
        with self.engine.begin() as c:
            c.execute(delete(SESSIONS).where(SESSIONS.c.id_hash == id_hash))

    # ------------------------------------------------------------ who started a run

    def claim_run(self, conn: Connection, saga_id: str, name: str) -> None:
        """In the starting transaction `conn`: record that `name` started run `saga_id` (unless the
        run already has a starter)."""
        conn.execute(update(SAGAS).where(SAGAS.c.id == saga_id, SAGAS.c.started_by.is_(None))
                     .values(started_by=name))

    def run_for_key_exists(self, conn: Connection, idempotency_key: str) -> bool:
        return conn.execute(select(SAGAS.c.id).where(SAGAS.c.idempotency_key == idempotency_key)).first() is not None

    def started_by(self, saga_id: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(SAGAS.c.started_by).where(SAGAS.c.id == saga_id)).scalar()

    def runs_of(self, name: str, *, state: str | None, saga_type: str | None, limit: int,
                offset: int) -> tuple[list[str], int]:
        """Ids of the runs `name` started, newest first, and how many there are."""
        where = [SAGAS.c.started_by == name]
        if state:
            where.append(SAGAS.c.state == state)
        if saga_type:
            where.append(SAGAS.c.saga_type == saga_type)
        with self.engine.connect() as c:
            total = c.execute(select(func.count()).select_from(SAGAS).where(*where)).scalar_one()
            ids = c.execute(select(SAGAS.c.id).where(*where).order_by(SAGAS.c.created_at.desc(), SAGAS.c.id)
                            .limit(limit).offset(offset)).scalars().all()
        return list(ids), int(total)
