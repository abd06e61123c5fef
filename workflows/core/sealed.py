"""Sealed fields, as data: the envelope's shape, the declared paths, the masks. Pure (no crypto).

A saga declares fields of its input sensitive by dotted path (`Saga(..., sensitive=("payment.card",))`).
The runtime (`workflows.runtime.sealing`) replaces each such value by an *envelope* before anything
is written or sent:

    {"$sealed": 1, "kid": "k2", "ct": "<base64 nonce + AES-GCM ciphertext>", "mac": "<HMAC-SHA256>"}

Here is only what needs no key: recognising an envelope, finding the declared paths in an input,
the stable form an idempotency key is bound to (each envelope by its keyed `mac`, never its
ciphertext, which differs on every seal), and the fixed mask every reader is shown instead.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from workflows.core.errors import DefinitionError

SEALED = "$sealed"
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*$")


def is_sealed(value: Any) -> bool:
    """Is `value` an envelope (a sealed field)?"""
    return (isinstance(value, dict) and value.get(SEALED) == 1 and isinstance(value.get("kid"), str)
            and isinstance(value.get("ct"), str))


def mask_of(envelope: dict[str, Any]) -> str:
    """What a reader is shown instead of a sealed value: fixed, naming only its key."""
    return f"•••• sealed ({envelope.get('kid')})"


def check_paths(owner: str, paths: Any) -> tuple[str, ...]:
    """`paths` as a tuple of dotted field paths, or `DefinitionError` saying what is wrong."""
    if isinstance(paths, str) or not isinstance(paths, Iterable):
        raise DefinitionError(f"{owner}: sensitive must be a tuple of dotted field paths, like ('payment.card',)")
    out = tuple(paths)
    for p in out:
        if not isinstance(p, str) or not _PATH.match(p) or len(p) > 200:
            raise DefinitionError(f"{owner}: sensitive field {p!r} must be a dotted path of field names, "
                                  "like 'payment.card'")
    if len(set(out)) != len(out):
        raise DefinitionError(f"{owner}: a sensitive field is declared twice in {out!r}")
    return out


def map_sealed(value: Any, fn: Callable[[dict[str, Any]], Any]) -> Any:
    """`value` with every envelope anywhere in it replaced by `fn(envelope)` (a copy; `value` is
    returned as is when it holds none)."""
    if is_sealed(value):
        return fn(value)
    if isinstance(value, dict):
        out = {k: map_sealed(v, fn) for k, v in value.items()}
        return value if all(out[k] is value[k] for k in value) else out
    if isinstance(value, list):
        items = [map_sealed(v, fn) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def has_sealed(value: Any) -> bool:
    if is_sealed(value):
        return True
    if isinstance(value, dict):
        return any(has_sealed(v) for v in value.values())
    if isinstance(value, list):
        return any(has_sealed(v) for v in value)
    return False


def masked(value: Any) -> Any:
    """`value` as a reader may see it: each envelope by its fixed mask."""
    return map_sealed(value, mask_of)


def stable(value: Any) -> Any:
    """`value` with each envelope by its keyed `mac` alone: equal for equal clear values, whatever
    key or nonce sealed them (what an idempotency key's input hash is computed on)."""
    return map_sealed(value, lambda e: {SEALED: e.get("mac")})


def map_paths(data: dict[str, Any], paths: tuple[str, ...], fn: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of `data` with `fn` applied to the value at each dotted path that is present and not
    None (a path through a missing field or a non-object is skipped: an optional field left out)."""
    out = data
    for path in paths:
        out = _apply(out, path.split("."), fn)
    return out


def _apply(node: dict[str, Any], keys: list[str], fn: Callable[[Any], Any]) -> dict[str, Any]:
    head, rest = keys[0], keys[1:]
    if not isinstance(node, dict) or head not in node or node[head] is None:
        return node
    child = node[head]
    if rest:
        if not isinstance(child, dict) or is_sealed(child):
            return node
        new = _apply(child, rest, fn)
    else:
        new = fn(child)
    return node if new is child else {**node, head: new}


def sealed_locations(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where the envelopes in `value` are, as pydantic-style locations (keys and list indexes)."""
    if is_sealed(value):
        return [at]
    if isinstance(value, dict):
        return [loc for k, v in value.items() for loc in sealed_locations(v, (*at, k))]
    if isinstance(value, list):
        return [loc for i, v in enumerate(value) for loc in sealed_locations(v, (*at, i))]
    return []


def unsealed_errors(errors: list[dict[str, Any]], data: Any) -> list[dict[str, Any]]:
    """The validation errors not about a sealed field of `data`: a sealed field was validated in
    clear at the door, before it was sealed; a check of stored input (a child's, on `move`) skips it."""
    places = sealed_locations(data)
    if not places:
        return errors
    return [e for e in errors if not any(tuple(e["loc"][:len(p)]) == p for p in places)]
