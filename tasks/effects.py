"""The example services' rules and effects, written through the caller's session.

One implementation for both styles: the orchestrated step tasks (`tasks/inventory.py`, ...) call
these in a transaction of their own; the choreography handlers call them in the handler's
transaction, so an effect commits together with the events it causes. Each is idempotent on its
key (a unique constraint): a second call finds the row and does nothing new.

A compensation that arrives before the action it undoes (events can overtake each other) leaves
a VOIDED row under the action's key: the late action then finds it and never takes effect.
"""
from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
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


def reserve(s: Session, key: str, saga_id: str, items: list[dict[str, Any]]) -> Reservation:
    """Take the items out of stock once per key; the existing row if there is one (even VOIDED).
    Raises `OutOfStock` having changed nothing."""
    existing = s.scalars(select(Reservation).where(Reservation.idempotency_key == key).with_for_update()).first()
    if existing is not None:
        return existing
    with s.begin_nested():  # one item short undoes the items taken before it
        for item in items:
            res = s.execute(update(Stock).where(Stock.sku == item["sku"], Stock.available >= item["quantity"])
                            .values(available=Stock.available - item["quantity"]))
            if res.rowcount != 1:  # type: ignore[attr-defined]
                raise OutOfStock(f"not enough stock of {item['sku']!r} for {item['quantity']} unit(s)")
    r = Reservation(idempotency_key=key, saga_id=saga_id, items=items, status="RESERVED", created_at=now())
    s.add(r)
    s.flush()
    return r


def release_or_void(s: Session, key: str, saga_id: str, items: list[dict[str, Any]]) -> str:
    """Put a reservation's items back once: 'released'; nothing reserved yet: a VOIDED row so a late
    reservation never happens, 'voided'; already released or voided: 'nothing'."""
    r = s.scalars(select(Reservation).where(Reservation.idempotency_key == key).with_for_update()).first()
    if r is None:
        s.add(Reservation(idempotency_key=key, saga_id=saga_id, items=items, status="VOIDED", created_at=now()))
        s.flush()
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
    existing = s.scalars(select(Payment).where(Payment.idempotency_key == key).with_for_update()).first()
    if existing is not None:
        return existing
    total = order_total(order)
    card = str(order.get("payment", {}).get("card", ""))
    if card in DECLINED_CARDS:
        raise CardDeclined(f"card ending {card[-4:]} was declined")
    if total > LIMIT:
        raise CardDeclined(f"amount {total} is over the card limit of {LIMIT}")
    p = Payment(idempotency_key=key, saga_id=saga_id, customer_id=order["customer_id"], amount=total,
                status="CHARGED", created_at=now())
    s.add(p)
    s.flush()
    return p


def refund_or_void(s: Session, key: str, saga_id: str, order: dict[str, Any]) -> str:
    """Refund a charge once: 'refunded'; no charge yet: a VOIDED row so a late charge never happens,
    'voided'; already refunded or voided: 'nothing'."""
    p = s.scalars(select(Payment).where(Payment.idempotency_key == key).with_for_update()).first()
    if p is None:
        s.add(Payment(idempotency_key=key, saga_id=saga_id, customer_id=order["customer_id"],
                      amount=order_total(order), status="VOIDED", created_at=now()))
        s.flush()
        return "voided"
    if p.status != "CHARGED":
        return "nothing"
    p.status, p.refunded_at = "REFUNDED", now()
    return "refunded"


def ship(s: Session, key: str, saga_id: str, address: dict[str, Any]) -> Shipment:
    """Book the shipment once per key. Raises `UndeliverableAddress` having written nothing."""
    existing = s.scalars(select(Shipment).where(Shipment.idempotency_key == key).with_for_update()).first()
    if existing is not None:
        return existing
    if address.get("country") in UNSERVED_COUNTRIES:
        raise UndeliverableAddress(f"no carrier delivers to country {address.get('country')!r}")
    tracking = "TRK" + hashlib.sha1(key.encode()).hexdigest()[:10].upper()
    sh = Shipment(idempotency_key=key, saga_id=saga_id, tracking_number=tracking, address=address,
                  status="CREATED", created_at=now())
    s.add(sh)
    s.flush()
    return sh


def cancel_or_void(s: Session, key: str, saga_id: str, address: dict[str, Any]) -> str:
    """Cancel a shipment once: 'cancelled'; none booked yet: a VOIDED row so a late booking never
    happens, 'voided'; already cancelled or voided: 'nothing'."""
    sh = s.scalars(select(Shipment).where(Shipment.idempotency_key == key).with_for_update()).first()
    if sh is None:
        s.add(Shipment(idempotency_key=key, saga_id=saga_id, tracking_number="", address=address,
                       status="VOIDED", created_at=now()))
        s.flush()
        return "voided"
    if sh.status != "CREATED":
        return "nothing"
    sh.status, sh.cancelled_at = "CANCELLED", now()
    return "cancelled"


def notify(s: Session, key: str, saga_id: str, recipient: str, kind: str = "order_confirmation") -> bool:
    """Send a notification once per key; False when it was sent already."""
    if s.scalars(select(Notification).where(Notification.idempotency_key == key)).first() is not None:
        return False
    s.add(Notification(idempotency_key=key, saga_id=saga_id, kind=kind, recipient=recipient, created_at=now()))
    return True


def money(value: Any) -> str:
    return str(Decimal(str(value)).quantize(Decimal("0.01")))
