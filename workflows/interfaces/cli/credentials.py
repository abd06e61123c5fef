"""`sagas credentials create|list|expire|revoke|audit`: per-person and per-service API tokens.

    sagas credentials create alice --role operator --expires-in 90d    # prints the token, once
    sagas credentials create shop-web --role service --expires-in never
    sagas credentials list            sagas credentials revoke alice
    sagas credentials expire alice --in 7d                sagas credentials audit --outcome refused

The database keeps each token's keyed hash only (`SAGA_TOKEN_KEY`); a lost token is revoked and
made anew. Whoever runs these commands reaches the database, so is an admin by nature; `--who`
(your user name by default) is recorded in the access audit.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import click
from rich.table import Table

from workflows.core.access import Role
from workflows.interfaces.cli.maintenance import _duration
from workflows.interfaces.cli.output import console, echo_json, runtime, time

ROLES = [r.value for r in Role]


def _expiry(raw: str) -> timedelta | None:
    return None if raw == "never" else _duration(raw)


@click.group()
def credentials() -> None:
    """Per-person and per-service API tokens with a role: viewer, operator, service, admin."""


@credentials.command()
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="viewer: read all; operator: read, act and signal; service: start sagas, read and signal its own; "
                   "admin: everything.")
@click.option("--expires-in", "expires_in", default="90d", show_default=True,
              help="30d, 12h, 90m, 3600s, or never.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (the token included).")
@click.pass_obj
def create(obj: dict[str, str], name: str, role: str, expires_in: str, as_json: bool) -> None:
    """Create a credential and print its token: it is shown this once, and stored only as a hash."""
    from workflows.operations import credentials as creds

    delta = _expiry(expires_in)
    rt = runtime()
    expires_at = rt.clock() + delta if delta is not None else None
    record, token = creds.create(name, Role(role), by=obj["who"], expires_at=expires_at, rt=rt)
    if as_json:
        echo_json({**record.to_dict(), "token": token})
        return
    click.echo(f"credential {record.name!r} ({record.role}), expires "
               f"{time(record.expires_at) + ' UTC' if record.expires_at else 'never'}")
    click.echo(f"token (shown once, keep it in a secret store): {token}")


@credentials.command(name="list")
@click.option("--all", "include_revoked", is_flag=True, help="Revoked credentials too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_credentials(include_revoked: bool, as_json: bool) -> None:
    """Credentials by name: role, creation, expiry, revocation (never a token)."""
    from workflows.operations.credentials import access_store

    rt = runtime()
    records = access_store(rt).credentials(include_revoked=include_revoked)
    if as_json:
        echo_json([r.to_dict() for r in records])
        return
    now = rt.clock()
    table = Table(title=f"{len(records)} credential(s)", title_justify="left")
    for col in ("name", "role", "state", "created", "by", "expires", "revoked"):
        table.add_column(col, no_wrap=True)
    for r in records:
        state = "active" if r.active(now) else ("revoked" if r.revoked_at else "expired")
        table.add_row(r.name, r.role, state, time(r.created_at), r.created_by, time(r.expires_at) or "never",
                      time(r.revoked_at))
    console().print(table)


@credentials.command()
@click.argument("name")
@click.pass_obj
def revoke(obj: dict[str, str], name: str) -> None:
    """Revoke NAME's credential now: its token answers 401 and its console sessions end."""
    from workflows.operations import credentials as creds

    record = creds.revoke(name, by=obj["who"], rt=runtime())
    click.echo(f"credential {record.name!r} revoked")


@credentials.command()
@click.argument("name")
@click.option("--in", "within", default="0s", show_default=True, help="When: now (0s), or 7d, 12h, ...")
@click.pass_obj
def expire(obj: dict[str, str], name: str, within: str) -> None:
    """Set NAME's credential to expire (now, or after a while): then its token answers 401."""
    from workflows.operations import credentials as creds

    rt = runtime()
    at: datetime = rt.clock() + _duration(within)
    record = creds.expire(name, at=at, by=obj["who"], rt=rt)
    click.echo(f"credential {record.name!r} expires {time(record.expires_at)} UTC")


@credentials.command()
@click.option("--who", "who", help="Only this name's rows.")
@click.option("--outcome", type=click.Choice(["allowed", "refused", "failed", "locked", "succeeded", "created",
                                              "revoked", "expired"]), help="Only rows with this outcome.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def audit(who: str | None, outcome: str | None, limit: int, as_json: bool) -> None:
    """The access audit, newest first: actions allowed and refused, logins, credential changes."""
    from workflows.operations.credentials import access_store

    rows = access_store(runtime()).audit_rows(who=who, outcome=outcome, limit=limit)
    if as_json:
        echo_json([r.to_dict() for r in rows])
        return
    table = Table(title=f"{len(rows)} audit row(s)", title_justify="left")
    for col in ("at", "who", "role", "action", "target", "outcome", "address", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(time(r.at), r.who, r.role or "", r.action, r.target or "", r.outcome, r.address or "",
                      r.note or "")
    console().print(table)


COMMANDS = (credentials,)
