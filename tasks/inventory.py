"""Inventory service: stock levels and reservations (step tasks over `tasks.effects`)."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from workflows import StepContext, step_task

from . import effects
from .common import already_done, check_fault, transaction
from .effects import OutOfStock
from .models import Reservation, Stock

__all__ = ["OutOfStock", "available", "release_reservation", "reserve_items", "restock"]


@step_task("inventory.reserve", queue="inventory")
def reserve_items(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Take the order's items out of available stock, once per idempotency key."""
    done = already_done(Reservation, ctx.idempotency_key)  # a repeat replays before anything can fail
    if done is None:
        check_fault("inventory", "action")
        with transaction() as s:
            done = effects.reserve(s, ctx.idempotency_key, ctx.saga_id, order["items"])
    return {"reservation_id": done.id, "status": done.status}


@step_task("inventory.release", queue="inventory")
def release_reservation(ctx: StepContext, order: dict[str, Any]) -> dict[str, Any]:
    """Put a reservation's items back, once. One that never happened is voided: a late
    reservation under the same key then takes no effect."""
    done = already_done(Reservation, ctx.idempotency_key)
    if done is not None and done.status != "RESERVED":
        return {"outcome": "nothing"}  # undone already: a repeat succeeds before anything can fail
    check_fault("inventory", "compensation")
    with transaction() as s:
        return {"outcome": effects.release_or_void(s, ctx.idempotency_key, ctx.saga_id, order["items"])}


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
