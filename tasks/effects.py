"""The example services' rules and effects, written through the caller's session.

One implementation for both styles: the orchestrated step tasks (`tasks/inventory.py`, ...) call
these in a transaction of their own; the choreography handlers call them in the handler's
transaction, so an effect commits together with the events it causes. Each is idempotent on its
key (a unique constraint): a second call finds the row and does nothing new. Two calls at once
(a message delivered twice, both copies running) claim the key by inserting its row first: the
second insert waits on the unique index until the first commits, then finds that row (`_claim`).

A compensation that arrives before the action it undoes (events can overtake each other) leaves
a VOIDED row under the action's key: the late action then finds it and never takes effect.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from workflows import PermanentError

from .common import now
from .models import Notification, Payment, Reservation, Shipment, Stock

DECLINED_CARDS = {"4000000000000002"}
LIMIT = Decimal("10000")
UNSERVED_COUNTRIES = {"XX"}


class OutOfStock(PermanentError):
    """Not enough stock (or an unknown SKU): retrying will not help."""


class CardDeclined(PermanentError):
    """The card was declined: retrying will not help."""


class UndeliverableAddress(PermanentError):
    """No carrier serves the address: retrying will not help."""


def order_total(order: dict[str, Any]) -> Decimal:
    return sum((Decimal(str(i["price"])) * i["quantity"] for i in order["items"]), Decimal("0"))

__all__ = ["CardDeclined", "OutOfStock", "UndeliverableAddress", "cancel_or_void", "charge", "notify",
           "order_total", "refund_or_void", "release_or_void", "reserve", "ship"]


def _claim(s: Session, model: Any, key: str, make: Callable[[], Any],
           effect: Callable[[Any], None] = lambda _row: None) -> tuple[Any, bool]:
    """The row under `key`: (the existing one, False), or (the row `make()` builds, True) once it
    is inserted and `effect(row)` ran, both in one savepoint (an exception from `effect` undoes the
    insert too, and propagates). A concurrent caller's insert of the same key waits for this
    transaction, fails on the unique key and returns this row: the effect happens once."""
    def existing() -> Any:
        return s.scalars(select(model).where(model.idempotency_key == key).with_for_update()).first()

    found = existing()
    if found is not None:
        return found, False
    row = make()
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
            effect(row)
    except IntegrityError:
        found = existing()
        if found is None:  # not a race on the key: some other constraint
            raise
        return found, False
    return row, True


def reserve(s: Session, key: str, saga_id: str, items: list[dict[str, Any]]) -> Reservation:
    """Take the items out of stock once per key; the existing row if there is one (even VOIDED).
    Raises `OutOfStock` having changed nothing."""
    def take(_row: Reservation) -> None:  # one item short undoes the claim and the items taken before it
        for item in items:
            res = s.execute(update(Stock).where(Stock.sku == item["sku"], Stock.available >= item["quantity"])
                            .values(available=Stock.available - item["quantity"]))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise OutOfStock(f"not enough stock of {item['sku']!r} for {item['quantity']} unit(s)")

    r, _ = _claim(s, Reservation, key, lambda: Reservation(idempotency_key=key, saga_id=saga_id, items=items,
                                                           status="RESERVED", created_at=now()), take)
    return r


def release_or_void(s: Session, key: str, saga_id: str, items: list[dict[str, Any]]) -> str:
    """Put a reservation's items back once: 'released'; nothing reserved yet: a VOIDED row so a late
    reservation never happens, 'voided'; already released or voided: 'nothing'."""
    r, voided = _claim(s, Reservation, key, lambda: Reservation(idempotency_key=key, saga_id=saga_id, items=items,
                                                                status="VOIDED", created_at=now()))
    if voided:
        return "voided"
    if r.status != "RESERVED":
        return "nothing"
    r.status, r.released_at = "RELEASED", now()
    for item in r.items:
        s.execute(update(Stock).where(Stock.sku == item["sku"]).values(available=Stock.available + item["quantity"]))
    return "released"


def charge(s: Session, key: str, saga_id: str, order: dict[str, Any]) -> Payment:
    """Charge the order total once per key; the existing row if there is one (even VOIDED).
    Raises `CardDeclined` having written nothing."""
    total = order_total(order)
    card = str(order.get("payment", {}).get("card", ""))

    def authorize(_row: Payment) -> None:
        if card in DECLINED_CARDS:
            raise CardDeclined(f"card ending {card[-4:]} was declined")
        if total > LIMIT:
            raise CardDeclined(f"amount {total} is over the card limit of {LIMIT}")

    p, _ = _claim(s, Payment, key, lambda: Payment(idempotency_key=key, saga_id=saga_id,
                                                   customer_id=order["customer_id"], amount=total, status="CHARGED",
                                                   created_at=now()), authorize)
    return p


def refund_or_void(s: Session, key: str, saga_id: str, order: dict[str, Any]) -> str:
    """Refund a charge once: 'refunded'; no charge yet: a VOIDED row so a late charge never happens,
    'voided'; already refunded or voided: 'nothing'."""
    p, voided = _claim(s, Payment, key, lambda: Payment(idempotency_key=key, saga_id=saga_id,
                                                        customer_id=order["customer_id"], amount=order_total(order),
                                                        status="VOIDED", created_at=now()))
    if voided:
        return "voided"
    if p.status != "CHARGED":
        return "nothing"
    p.status, p.refunded_at = "REFUNDED", now()
    return "refunded"


def ship(s: Session, key: str, saga_id: str, address: dict[str, Any]) -> Shipment:
    """Book the shipment once per key. Raises `UndeliverableAddress` having written nothing."""
    def book(_row: Shipment) -> None:
        if address.get("country") in UNSERVED_COUNTRIES:
            raise UndeliverableAddress(f"no carrier delivers to country {address.get('country')!r}")

    tracking = "TRK" + hashlib.sha1(key.encode()).hexdigest()[:10].upper()
    sh, _ = _claim(s, Shipment, key, lambda: Shipment(idempotency_key=key, saga_id=saga_id, tracking_number=tracking,
                                                      address=address, status="CREATED", created_at=now()), book)
    return sh


def cancel_or_void(s: Session, key: str, saga_id: str, address: dict[str, Any]) -> str:
    """Cancel a shipment once: 'cancelled'; none booked yet: a VOIDED row so a late booking never
    happens, 'voided'; already cancelled or voided: 'nothing'."""
    sh, voided = _claim(s, Shipment, key, lambda: Shipment(idempotency_key=key, saga_id=saga_id, tracking_number="",
                                                           address=address, status="VOIDED", created_at=now()))
    if voided:
        return "voided"
    if sh.status != "CREATED":
        return "nothing"
    sh.status, sh.cancelled_at = "CANCELLED", now()
    return "cancelled"


def notify(s: Session, key: str, saga_id: str, recipient: str, kind: str = "order_confirmation") -> bool:
    """Send a notification once per key; False when it was sent already."""
    _, sent = _claim(s, Notification, key, lambda: Notification(idempotency_key=key, saga_id=saga_id, kind=kind,
                                                                recipient=recipient, created_at=now()))
    return sent


def money(value: Any) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01")))
