"""Sealing sensitive fields: AES-GCM envelopes under keys from the settings (`core.sealed` is the
data side: the envelope's shape, the paths, the masks).

    sealer = Sealer.from_settings(settings)
    stored = sealer.seal(saga, clean_input)     # at the door, before the run is written
    clear = sealer.open(message_input)          # in the step path, just before the user's function

Each envelope names its key (`kid`), so several keys may be held at once: the first of
`SAGA_FIELD_KEYS` seals, every one of them opens (rotation). The AES-GCM associated data is the
key id. `mac` is an HMAC-SHA256 of the clear value under `SAGA_FIELD_HASH_KEY`: what an
idempotency key compares (`store.records.input_hash`), never a plain hash of a card number, which
anyone could recompute for every card number there is.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from workflows.core.definition import Saga, Step
from workflows.core.errors import SealingError
from workflows.core.sealed import SEALED, has_sealed, is_sealed, map_paths, map_sealed
from workflows.runtime.settings import Settings

_NONCE = 12
KEY_FILE = "field-keys"
"""The file in `data_dir` holding the keys made for a laptop (SQLite, no `SAGA_FIELD_KEYS`)."""


@dataclass(frozen=True)
class Sealer:
    """Seals and opens field values. Immutable; `keys` in order, the first the current one."""

    keys: tuple[tuple[str, bytes], ...]
    hash_key: bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer | None:
        """The sealer of `settings`; None when no key is configured (and the database is not the
        embedded SQLite, for which keys are made once in `data_dir`)."""
        raw = settings.field_keys.get_secret_value() if settings.field_keys else ""
        hashed = settings.field_hash_key.get_secret_value() if settings.field_hash_key else ""
        if not raw.strip():
            if not settings.resolved_database_url().startswith("sqlite"):
                if hashed:
                    raise SealingError("SAGA_FIELD_HASH_KEY is set but SAGA_FIELD_KEYS is not: set both")
                return None
            raw, hashed = _laptop_keys(settings.absolute_data_dir() / KEY_FILE)
        if not hashed.strip():
            raise SealingError("SAGA_FIELD_KEYS is set but SAGA_FIELD_HASH_KEY is not: set both "
                               "(base64 of 32 random bytes each)")
        return cls(parse_keys(raw), _key("SAGA_FIELD_HASH_KEY", hashed.strip()))

    @property
    def current(self) -> str:
        return self.keys[0][0]

    def key(self, kid: str) -> bytes:
        for name, key in self.keys:
            if name == kid:
                return key
        raise SealingError(f"a sealed field names key {kid!r}, which SAGA_FIELD_KEYS does not hold "
                           f"(held: {', '.join(n for n, _ in self.keys)}): add it back after the current key")

    # ------------------------------------------------------------------ one value

    def seal_value(self, value: Any) -> dict[str, Any]:
        """`value` (any JSON) as an envelope under the current key."""
        clear = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
        mac = hmac.new(self.hash_key, clear, hashlib.sha256).hexdigest()
        return self._envelope(clear, mac)

    def open_value(self, envelope: dict[str, Any]) -> Any:
        return json.loads(self._decrypt(envelope))

    def reseal(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """`envelope` under the current key (itself if it is already), its `mac` unchanged."""
        if envelope["kid"] == self.current:
            return envelope
        return self._envelope(self._decrypt(envelope), str(envelope.get("mac")))

    def _envelope(self, clear: bytes, mac: str) -> dict[str, Any]:
        kid, key = self.keys[0]
        nonce = os.urandom(_NONCE)
        ct = AESGCM(key).encrypt(nonce, clear, kid.encode())
        return {SEALED: 1, "kid": kid, "ct": base64.b64encode(nonce + ct).decode(), "mac": mac}

    def _decrypt(self, envelope: dict[str, Any]) -> bytes:
        kid = envelope["kid"]
        try:
            blob = base64.b64decode(envelope["ct"], validate=True)
            return AESGCM(self.key(kid)).decrypt(blob[:_NONCE], blob[_NONCE:], kid.encode())
        except (InvalidTag, binascii.Error, ValueError) as e:
            raise SealingError(f"a sealed field under key {kid!r} does not decrypt ({type(e).__name__}): "
                               "the key is not the one it was sealed with, or the envelope was altered") from None

    # ------------------------------------------------------------------ an input

    def seal(self, saga: Saga, data: dict[str, Any]) -> dict[str, Any]:
        """`data` with each of `saga`'s sensitive fields sealed (one already sealed is kept)."""
        return self.seal_fields(saga.sensitive, data)

    def seal_fields(self, paths: tuple[str, ...], data: dict[str, Any]) -> dict[str, Any]:
        """`data` with the value at each dotted path of `paths` sealed (one already sealed is kept)."""
        if not paths:
            return data
        return map_paths(data, paths, lambda v: v if is_sealed(v) else self.seal_value(v))

    def open(self, value: Any) -> Any:
        """`value` with every envelope in it opened (the step function's view)."""
        return map_sealed(value, self.open_value) if has_sealed(value) else value

    def reseal_all(self, value: Any) -> Any:
        """`value` with every envelope in it under the current key."""
        return map_sealed(value, self.reseal)


def seal_paths(sealer: Sealer | None, owner: str, paths: tuple[str, ...], data: dict[str, Any]) -> dict[str, Any]:
    """`data` with the value at each of `paths` sealed (one already sealed is kept); `SealingError`
    naming `owner` and the fields when no key is configured. The one place a declaration is sealed:
    a saga's input, a step's result, an event's payload, a signal's payload."""
    if not paths:
        return data
    if sealer is None:
        raise SealingError(f"{owner} declares sensitive fields {', '.join(paths)} and no key is configured: "
                           "set SAGA_FIELD_KEYS and SAGA_FIELD_HASH_KEY (docs: operations/security)")
    return sealer.seal_fields(paths, data)


def seal_input(sealer: Sealer | None, saga: Saga, data: dict[str, Any]) -> dict[str, Any]:
    """`data` sealed as `saga` declares."""
    return seal_paths(sealer, f"saga {saga.name!r}", saga.sensitive, data)


def seal_result(sealer: Sealer | None, step: Step, result: dict[str, Any]) -> dict[str, Any]:
    """An action's `result` with the fields `step` declares sensitive sealed (before it is recorded)."""
    return seal_paths(sealer, f"step {step.name!r}", step.sensitive_result, result)


def open_input(sealer: Sealer | None, value: Any, what: str = "a step's input") -> Any:
    """`value` opened; `SealingError` if it holds an envelope and no key is configured."""
    if not has_sealed(value):
        return value
    if sealer is None:
        raise SealingError(f"{what} holds a sealed field and this process has no key: "
                           "set SAGA_FIELD_KEYS and SAGA_FIELD_HASH_KEY")
    return sealer.open(value)


def check_declared(sealer: Sealer | None, sagas: list[Saga], choreographies: Iterable[Any] = ()) -> None:
    """At startup: `SealingError` naming each saga (and choreography) whose sensitive fields no key can seal."""
    missing = [f"{s.name} v{s.version} ({', '.join(declared(s))})" for s in sagas if declared(s)]
    missing += [f"choreography {ch.name} ({', '.join(ch.sensitive_declared())})" for ch in choreographies
                if ch.sensitive_declared()]
    if missing and sealer is None:
        raise SealingError(f"sensitive fields are declared and no key is configured: {'; '.join(missing)}. "
                           "Set SAGA_FIELD_KEYS and SAGA_FIELD_HASH_KEY (docs: operations/security)")


def declared(saga: Saga) -> list[str]:
    """The sensitive fields `saga` declares: of its input, of its steps' results and of its waits'
    signals (`step:path`)."""
    return [*saga.sensitive, *(f"{st.name}:{p}" for st in saga.plan.task_steps for p in st.sensitive_result),
            *(f"{w.name}:{p}" for w in saga.plan.waits for p in w.sensitive)]


def parse_keys(raw: str) -> tuple[tuple[str, bytes], ...]:
    """`kid:<base64 32 bytes>,...` as ((kid, key), ...), or `SealingError` naming what is wrong."""
    keys: list[tuple[str, bytes]] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        kid, sep, b64 = part.partition(":")
        kid = kid.strip()
        if not sep or not kid or not kid.replace("-", "").replace("_", "").isalnum() or len(kid) > 32:
            raise SealingError("SAGA_FIELD_KEYS must be 'kid:<base64 of 32 bytes>,...' with a short "
                               "alphanumeric key id before each ':'")
        if kid in (k for k, _ in keys):
            raise SealingError(f"SAGA_FIELD_KEYS names key {kid!r} twice")
        keys.append((kid, _key(f"SAGA_FIELD_KEYS key {kid!r}", b64.strip())))
    if not keys:
        raise SealingError("SAGA_FIELD_KEYS holds no key")
    return tuple(keys)


def _key(what: str, b64: str) -> bytes:
    try:
        key = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise SealingError(f"{what} is not base64") from None
    if len(key) != 32:
        raise SealingError(f"{what} must be 32 bytes (base64 of 32 random bytes), got {len(key)}")
    return key


def new_key() -> str:
    """Base64 of 32 random bytes: a new field key or hash key."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def _laptop_keys(path: Path) -> tuple[str, str]:
    """The keys of a laptop's embedded SQLite: made once in `data_dir` (owner-only), read after."""
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"keys": f"local:{new_key()}", "hash_key": new_key()}))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # first writer wins; another process's file is kept
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    saved = json.loads(path.read_text())
    return str(saved["keys"]), str(saved["hash_key"])
