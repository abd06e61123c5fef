"""Who may do what: roles, the permissions they grant, and the authenticated caller.

Pure: no I/O. The API, the console and the CLI authenticate a caller (a credential, the single
`SAGA_API_TOKEN`, a trusted proxy's header) into a `Caller`, then ask `caller.may(permission)`.
The name recorded in a saga's history is always `Caller.name`; what a caller writes itself
(`X-Operator`, the console's note field) is only a note beside it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Permission(str, Enum):
    READ = "read"
    """Read every run, dead letter and version report."""
    READ_OWN = "read_own"
    """Read the runs this credential started (recorded on the run, `started_by`)."""
    START = "start"
    """Start sagas."""
    SIGNAL = "signal"
    """Send a signal to any run."""
    SIGNAL_OWN = "signal_own"
    """Send a signal to a run this credential started."""
    ACT = "act"
    """The operator's actions: retry, resume, cancel, move, redrive, discard."""
    MANAGE = "manage"
    """Create, expire and revoke credentials; read the access audit."""


class Role(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    SERVICE = "service"
    ADMIN = "admin"


GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.SIGNAL, Permission.ACT}),
    Role.SERVICE: frozenset({Permission.START, Permission.READ_OWN, Permission.SIGNAL_OWN}),
    Role.ADMIN: frozenset(Permission),
}
"""What each role may do. An admin may do everything; a service only what a web app needs."""

NAME_MAX = 100


@dataclass(frozen=True)
class Caller:
    """An authenticated caller. Immutable."""

    name: str
    """The credential's name: what the history and the audit record as who acted."""
    role: Role
    credential_id: str | None = None
    """The credential's id (None: the single token, a trusted proxy's user, an open laptop)."""

    def may(self, permission: Permission) -> bool:
        return permission in GRANTS[self.role]

    def may_read(self, owner: str | None) -> bool:
        """May read a run started by `owner` (None: started without a credential)."""
        return self.may(Permission.READ) or (self.may(Permission.READ_OWN) and owner == self.name)

    def may_signal(self, owner: str | None) -> bool:
        return self.may(Permission.SIGNAL) or (self.may(Permission.SIGNAL_OWN) and owner == self.name)


def parse_role(value: str) -> Role:
    """A role from its name; a `ValueError` naming the roles otherwise."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise ValueError(f"no role {value!r}: choose one of {', '.join(r.value for r in Role)}") from None
