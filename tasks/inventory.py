"""Inventory service: stock levels and reservations."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from workflows import PermanentError, StepContext, step_task

from .common import already_done, check_fault, now, transaction
from .models import Reservation, Stock


class OutOfStock(PermanentError):
    """Not enough stock (or an unknown SKU): retrying will not help."""


@step_task("inventory.reserve", queue="inventory")
def reserve_items(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Take the order's items out of available stock, once per idempotency key."""
    done = already_done(Reservation, ctx.idempotency_key)
    if done is not None:
        return {"reservation_id": done.id}
    check_fault("inventory", "action")
    with transaction() as s:
        existing = s.scalars(select(Reservation).where(Reservation.idempotency_key == ctx.idempotency_key)).first()
        if existing is not None:  # a redelivery or retry: already done
            return {"reservation_id": existing.id}
        for item in order["items"]:
            res = s.execute(update(Stock).where(Stock.sku == item["sku"], Stock.available >= item["quantity"])
                            .values(available=Stock.available - item["quantity"]))
            if res.rowcount != 1:
                raise OutOfStock(f"not enough stock of {item['sku']!r} for {item['quantity']} unit(s)")
        r = Reservation(idempotency_key=ctx.idempotency_key, saga_id=ctx.saga_id, items=order["items"],
                        status="RESERVED", created_at=now())
        s.add(r)
        s.flush()
        return {"reservation_id": r.id}


@step_task("inventory.release", queue="inventory")
def release_reservation(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Put a reservation's items back, once. A reservation that never happened needs nothing."""
    check_fault("inventory", "compensation")
    with transaction() as s:
        r = s.scalars(select(Reservation).where(Reservation.idempotency_key == ctx.idempotency_key)
                      .with_for_update()).first()
        if r is None or r.status != "RESERVED":
            return {"released": False}
        r.status, r.released_at = "RELEASED", now()
        for item in r.items:
            s.execute(update(Stock).where(Stock.sku == item["sku"])
                      .values(available=Stock.available + item["quantity"]))
        return {"released": True}


def restock(levels: dict[str, int]) -> None:
    """Set the available quantity of each SKU (demo and test set-up)."""
    with transaction() as s:
        insert = pg_insert if s.bind.dialect.name == "postgresql" else sqlite_insert  # type: ignore[union-attr]
        for sku, qty in levels.items():
            stmt = insert(Stock).values(sku=sku, available=qty)
            s.execute(stmt.on_conflict_do_update(index_elements=[Stock.sku], set_={"available": qty}))


def available(sku: str) -> int | None:
    with transaction() as s:
        return s.scalar(select(Stock.available).where(Stock.sku == sku))
