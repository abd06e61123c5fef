"""Credentials: per-person and per-service API tokens with a role, and who they authenticate.

    token = create("alice", Role.OPERATOR, by="root", expires_at=...)   # shown once, stored as a hash
    caller = authenticate(settings, token)                               # a Caller, or None

A token is `sgt_` and 43 characters of `secrets.token_urlsafe(32)`: 256 random bits. It is
stored only as its lookup hash, HMAC-SHA256 keyed by `SAGA_TOKEN_KEY` (stdlib `hmac`), found by
that hash through a unique index. A slow password hash (argon2, scrypt) protects secrets a
person chose, which an attacker can guess; a 256-bit random token cannot be guessed, so a slow
hash would only cost every request its milliseconds (the practice of GitHub's and Stripe's API
tokens). The key makes a stolen table useless even for checking a token found elsewhere.

The single token (`SAGA_API_TOKEN`) authenticates as an admin named `SAGA_API_TOKEN_NAME`.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from workflows.core.access import NAME_MAX, Caller, Role
from workflows.core.errors import SagaError
from workflows.runtime.container import Runtime, get_runtime
from workflows.runtime.settings import Settings
from workflows.store.access import AccessStore, AuditRecord, CredentialRecord

TOKEN_PREFIX = "sgt_"
_DEFAULT_KEY = b"saga-credentials-v1"
_stores: dict[str, AccessStore] = {}


def access_store(rt: Runtime | None = None) -> AccessStore:
    """The access tables on the runtime's database."""
    url = (rt or get_runtime()).settings.resolved_database_url()
    store = _stores.get(url)
    if store is None:
        store = _stores[url] = AccessStore(url)
    return store


def lookup_hash(settings: Settings, secret: str) -> str:
    key = settings.token_key.get_secret_value().encode() if settings.token_key else _DEFAULT_KEY
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > NAME_MAX or not name.isprintable():
        raise SagaError(f"a credential's name is 1 to {NAME_MAX} printable characters (got {name[:120]!r})")
    return name


def create(name: str, role: Role, *, by: str, expires_at: datetime | None,
           rt: Runtime | None = None) -> tuple[CredentialRecord, str]:
    """A new credential and its token (the only time the token exists outside its holder)."""
    rt = rt or get_runtime()
    now = rt.clock()
    if expires_at is not None and expires_at <= now:
        raise SagaError("the expiry must be in the future")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    record = CredentialRecord(id=secrets.token_hex(8), name=check_name(name), role=role.value, created_at=now,
                              created_by=by[:NAME_MAX], expires_at=expires_at, revoked_at=None)
    store = access_store(rt)
    store.add_credential(record, lookup_hash(rt.settings, token))
    note(rt, by, None, "credential.create", f"{record.name} ({role.value})", "created")
    return record, token


def revoke(name: str, *, by: str, rt: Runtime | None = None) -> CredentialRecord:
    rt = rt or get_runtime()
    record = access_store(rt).revoke(name, rt.clock())
    if record is None:
        raise SagaError(f"no active credential named {name!r} (sagas credentials list)")
    note(rt, by, None, "credential.revoke", record.name, "revoked")
    return record


def expire(name: str, *, at: datetime, by: str, rt: Runtime | None = None) -> CredentialRecord:
    rt = rt or get_runtime()
    record = access_store(rt).expire(name, at)
    if record is None:
        raise SagaError(f"no active credential named {name!r} (sagas credentials list)")
    note(rt, by, None, "credential.expire", f"{record.name} at {at.isoformat()}", "expired")
    return record


def caller_of(record: CredentialRecord) -> Caller:
    return Caller(record.name, Role(record.role), record.id)


def authenticate(settings: Settings, token: str, rt: Runtime | None = None) -> Caller | None:
    """The caller `token` authenticates under `settings`, or None (unknown, revoked, expired, or
    credentials not enabled)."""
    if not token or len(token) > 200:
        return None
    if settings.api_token and hmac.compare_digest(token.encode(), settings.api_token.encode()):
        return Caller(settings.api_token_name, Role.ADMIN)
    if not settings.auth_credentials or not token.startswith(TOKEN_PREFIX):
        return None
    rt = rt or get_runtime()
    record = access_store(rt).credential_by_hash(lookup_hash(settings, token))
    return caller_of(record) if record is not None and record.active(rt.clock()) else None


def proxy_user(settings: Settings, name: str, rt: Runtime | None = None) -> Caller | None:
    """A user a trusted proxy named: the active credential of that name (its role), or None."""
    rt = rt or get_runtime()
    record = access_store(rt).active_by_name(name)
    return caller_of(record) if record is not None and record.active(rt.clock()) else None


def note(rt: Runtime, who: str, role: str | None, action: str, target: str | None, outcome: str, *,
         address: str | None = None, remark: str | None = None) -> None:
    """One row of the access audit."""
    access_store(rt).audit(AuditRecord(at=rt.clock(), who=who, role=role, action=action, target=target,
                                       outcome=outcome, address=address, note=remark))


# ------------------------------------------------------------------ console logins


def locked_until(settings: Settings, name: str, address: str | None, rt: Runtime | None = None) -> datetime | None:
    """When a login for `name` from `address` is refused for too many failures: until when."""
    rt = rt or get_runtime()
    now = rt.clock()
    window = timedelta(seconds=settings.login_lockout_seconds)
    by_name, by_address = access_store(rt).failed_logins(name=name, address=address, since=now - window)
    if max(by_name, by_address) >= settings.login_max_failures:
        return now + window
    return None


def open_session(settings: Settings, caller: Caller, rt: Runtime | None = None) -> str:
    """A console session for a credential's caller: its secret (the cookie), stored as a hash."""
    assert caller.credential_id is not None
    rt = rt or get_runtime()
    secret = secrets.token_urlsafe(32)
    now = rt.clock()
    access_store(rt).add_session(lookup_hash(settings, secret), caller.credential_id, now,
                                 now + timedelta(hours=settings.console_session_hours))
    return secret


def session_caller(settings: Settings, secret: str, rt: Runtime | None = None) -> Caller | None:
    if not secret or len(secret) > 100:
        return None
    rt = rt or get_runtime()
    record = access_store(rt).session_credential(lookup_hash(settings, secret), rt.clock())
    return caller_of(record) if record is not None else None


def end_session(settings: Settings, secret: str, rt: Runtime | None = None) -> None:
    access_store(rt or get_runtime()).end_session(lookup_hash(settings, secret))


# ------------------------------------------------------------------ runs a credential started


def start_owned(caller: Caller, saga_type: str, data: object, *, idempotency_key: str | None,
                version: int | None, saga_id: str | None = None) -> str:
    """`start_saga` recording the caller on the run (`started_by`), in the start's own transaction:
    both or neither. A caller without a credential (the single token, an open laptop) starts as
    before, owning nothing. An idempotent repeat of a run someone else started claims nothing."""
    from workflows.operations.client import start_saga

    if caller.credential_id is None:
        return start_saga(saga_type, data, idempotency_key=idempotency_key, version=version, saga_id=saga_id)
    store = access_store()
    with store.engine.begin() as conn:
        existed = idempotency_key is not None and store.run_for_key_exists(conn, idempotency_key)
        started = start_saga(saga_type, data, idempotency_key=idempotency_key, version=version, saga_id=saga_id,
                             connection=conn)
        if not existed:
            store.claim_run(conn, started, caller.name)
    return started


def owner_of(saga_id: str) -> str | None:
    return access_store().started_by(saga_id)


def runs_of(name: str, *, state: str | None, saga_type: str | None, limit: int, offset: int) -> tuple[list[str], int]:
    """The ids of the runs `name` started, newest first, and how many."""
    return access_store().runs_of(name, state=state, saga_type=saga_type, limit=limit, offset=offset)
