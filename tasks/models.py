"""The example services' own tables (separate from the saga store's, same database by default)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Integer, Numeric, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from workflows.store.models import BigId, JSONType, UTCDateTime


class ServiceBase(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime}


class Stock(ServiceBase):
    __tablename__ = "inventory_stock"
    __table_args__ = (CheckConstraint("available >= 0", name="ck_stock_available"),)
    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    available: Mapped[int] = mapped_column(Integer)


class Reservation(ServiceBase):
    __tablename__ = "inventory_reservations"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_reservation_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    saga_id: Mapped[str] = mapped_column(String(64), index=True)
    items: Mapped[list[Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20))  # RESERVED | RELEASED
    created_at: Mapped[datetime]
    released_at: Mapped[datetime | None]


class Payment(ServiceBase):
    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_payment_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    saga_id: Mapped[str] = mapped_column(String(64), index=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    amount: Mapped[Any] = mapped_column(Numeric(12, 2))
    status: Mapped[str] = mapped_column(String(20))  # CHARGED | REFUNDED
    created_at: Mapped[datetime]
    refunded_at: Mapped[datetime | None]


class Shipment(ServiceBase):
    __tablename__ = "shipments"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_shipment_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    saga_id: Mapped[str] = mapped_column(String(64), index=True)
    tracking_number: Mapped[str] = mapped_column(String(64))
    address: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(20))  # CREATED | CANCELLED
    created_at: Mapped[datetime]
    cancelled_at: Mapped[datetime | None]


class Notification(ServiceBase):
    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("idempotency_key", name="uq_notification_key"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(200))
    saga_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    recipient: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class Fault(ServiceBase):
    """An armed failure: the next `remaining` calls of `service` fail (permanently or not)."""

    __tablename__ = "service_faults"
    service: Mapped[str] = mapped_column(String(40), primary_key=True)
    remaining: Mapped[int] = mapped_column(Integer)
    permanent: Mapped[bool]
    message: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(40), default="action")  # action | compensation | any
    rate: Mapped[float] = mapped_column(default=1.0)
    """Probability that a call fails while `remaining` lasts (chaos tests use < 1)."""


class Counter(ServiceBase):
    """A named counter the shop numbers things with (`order`: the next order number, tasks/checkout.py)."""

    __tablename__ = "shop_counters"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)
    """The last number handed out."""
