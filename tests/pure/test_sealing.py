"""Sealed fields' primitives: declarations refused at the door, envelopes that name their key and
open under any held key, keyed hashes, masks, and a clear error when no key is configured."""
from __future__ import annotations

import base64
import json

import pytest

from workflows import Saga, Step
from workflows.core.errors import DefinitionError, SealingError
from workflows.core.sealed import is_sealed, map_paths, masked, stable, unsealed_errors
from workflows.runtime.sealing import Sealer, check_declared, new_key, open_input, parse_keys, seal_input
from workflows.runtime.settings import Settings

CARD = "4242424242424242"
K1, K2, H = new_key(), new_key(), new_key()


def sealer(keys: str) -> Sealer:
    return Sealer(parse_keys(keys), base64.b64decode(H))



SAGA = Saga("pure.sealed", sensitive=("payment.card", "ssn"), steps=[Step("a", action="pure.noop", compensation=None)])


def test_a_declaration_names_dotted_paths() -> None:
    for bad in ("payment.card", ("payment..card",), ("1card",), ("a", "a")):
        with pytest.raises(DefinitionError, match="sensitive"):
            Saga("pure.bad", sensitive=bad, steps=[Step("a", action="pure.noop", compensation=None)])  # type: ignore[arg-type]


def test_an_envelope_names_its_key_opens_under_any_held_key_and_is_resealed_into_the_current() -> None:
    old = sealer(f"k1:{K1}")
    data = old.seal(SAGA, {"payment": {"card": CARD}, "ssn": None, "order_id": "o1"})
    env = data["payment"]["card"]
    assert is_sealed(env) and env["kid"] == "k1" and CARD not in json.dumps(data)
    assert data["ssn"] is None and data["order_id"] == "o1"  # an absent (None) field is left alone
    rotated = sealer(f"k2:{K2},k1:{K1}")
    assert rotated.open(data) == {"payment": {"card": CARD}, "ssn": None, "order_id": "o1"}
    again = rotated.reseal_all(data)
    assert again["payment"]["card"]["kid"] == "k2" and again["payment"]["card"]["mac"] == env["mac"]
    assert sealer(f"k2:{K2}").open(again)["payment"]["card"] == CARD
    with pytest.raises(SealingError, match="'k1'"):
        sealer(f"k2:{K2}").open(data)  # the old key dropped too early: an error naming it
    tampered = {**env, "ct": base64.b64encode(b"x" * 40).decode()}
    with pytest.raises(SealingError, match="does not decrypt"):
        old.open_value(tampered)


def test_equal_cards_hash_equal_under_any_nonce_and_key_and_the_mask_is_fixed() -> None:
    a = sealer(f"k1:{K1}").seal(SAGA, {"payment": {"card": CARD}})
    b = sealer(f"k2:{K2}").seal(SAGA, {"payment": {"card": CARD}})
    c = sealer(f"k1:{K1}").seal(SAGA, {"payment": {"card": "4000000000000002"}})
    assert a != b and stable(a) == stable(b) and stable(a) != stable(c)
    assert masked(a) == {"payment": {"card": "•••• sealed (k1)"}}


def test_a_stored_input_is_checked_without_its_sealed_fields() -> None:
    data = sealer(f"k1:{K1}").seal(SAGA, {"payment": {"card": CARD}})
    errors = [{"loc": ["payment", "card"], "msg": "bad"}, {"loc": ["order_id"], "msg": "missing"}]
    assert unsealed_errors(errors, data) == [{"loc": ["order_id"], "msg": "missing"}]
    assert map_paths({"payment": "not an object"}, ("payment.card",), lambda v: 1) == {"payment": "not an object"}


def test_keys_that_do_not_parse_are_refused_naming_the_problem() -> None:
    for raw, problem in (("k1", "kid:"), (f"k1:{K1},k1:{K2}", "twice"), ("k1:YWJj", "32 bytes"),
                         ("k1:%%%", "base64"), ("", "no key")):
        with pytest.raises(SealingError, match=problem):
            parse_keys(raw)


def test_no_key_on_a_server_database_is_an_error_naming_the_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_FIELD_KEYS", raising=False)  # the settings read the environment: none here
    monkeypatch.delenv("SAGA_FIELD_HASH_KEY", raising=False)
    settings = Settings(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    none = Sealer.from_settings(settings)
    assert none is None
    with pytest.raises(SealingError, match=r"payment\.card, ssn.*SAGA_FIELD_KEYS"):
        seal_input(none, SAGA, {"payment": {"card": CARD}})
    with pytest.raises(SealingError, match=r"pure\.sealed v1 \(payment\.card, ssn\)"):
        check_declared(none, [SAGA])
    with pytest.raises(SealingError, match="no key"):
        open_input(none, sealer(f"k1:{K1}").seal(SAGA, {"payment": {"card": CARD}}))
    with pytest.raises(SealingError, match="SAGA_FIELD_HASH_KEY"):
        Sealer.from_settings(Settings(database_url=settings.database_url, field_keys=f"k1:{K1}"))  # type: ignore[arg-type]
    assert Sealer.from_settings(Settings(database_url=settings.database_url, field_keys=f"k1:{K1}",  # type: ignore[arg-type]
                                         field_hash_key=H)).current == "k1"  # type: ignore[arg-type]
