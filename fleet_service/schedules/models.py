"""Schedules, their slots, and which schedule version each receiver was sent."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleet_service.db import Base, UTCDateTime, utcnow


class Schedule(Base):
    """A programme (e.g. the morning and evening bulletins) for one station or a region subtree."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    target_kind: Mapped[str] = mapped_column(String(16))  # "station" or "region"
    # The station or region by id only: a copy of its region path would go stale when a region
    # moves (its receivers were then sent an empty schedule). The path is looked up when needed.
    target_id: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    slots: Mapped[list[ScheduleSlotRow]] = relationship(cascade="all, delete-orphan", order_by="ScheduleSlotRow.start")


class ScheduleSlotRow(Base):
    __tablename__ = "schedule_slots"

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    start: Mapped[str] = mapped_column(String(8))   # HH:MM[:SS], the station's local time
    end: Mapped[str] = mapped_column(String(8))
    days: Mapped[int] = mapped_column(Integer, default=127)  # bit 0 Monday ... bit 6 Sunday
    url: Mapped[str] = mapped_column(String(256))
    priority: Mapped[str] = mapped_column(String(16))
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)
    volume: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(200))


class ReceiverSchedule(Base):
    """The schedule version last sent to a receiver (what it should hold)."""

    __tablename__ = "receiver_schedules"

    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))
    command_id: Mapped[str] = mapped_column(String(32))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
