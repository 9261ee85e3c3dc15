"""Registry tables: regions (any depth), stations, receivers, their credentials and history."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from fleet_service.db import Base, UTCDateTime, utcnow


class Region(Base):
    """One administrative unit. The levels (province, district, commune, town, ...) are data:
    units are merged, split and abolished (Vietnam did all three in 2025)."""

    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Free text: "tỉnh", "huyện", "xã", "thị trấn", "phường", ... whatever the country uses now.
    level: Mapped[str] = mapped_column(String(50))
    code: Mapped[str | None] = mapped_column(String(50), unique=True)
    # Materialised path of ids, "/1/7/42/": a subtree is one indexed prefix match.
    path: Mapped[str] = mapped_column(String(1000), index=True)

    parent: Mapped[Region | None] = relationship(remote_side=[id])


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[int] = mapped_column(primary_key=True)
    region_id: Mapped[int] = mapped_column(ForeignKey("regions.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    address: Mapped[str | None] = mapped_column(String(500))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    region: Mapped[Region] = relationship()


class ReceiverStatus(StrEnum):
    ACTIVE = "active"    # may log in
    REVOKED = "revoked"  # credentials withdrawn; kept for its history
    RETIRED = "retired"  # replaced or decommissioned; kept for its history


class Receiver(Base):
    __tablename__ = "receivers"

    # The receiver id is its MQTT username, client id and topic level (see protocol.topics).
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(100), unique=True)
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id", ondelete="RESTRICT"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=ReceiverStatus.ACTIVE.value)
    firmware_version: Mapped[str | None] = mapped_column(String(32))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    station: Mapped[Station | None] = relationship()


class ReceiverCredential(Base):
    """An MQTT password for a receiver, stored as a hash. Device secrets are 160-bit random
    tokens, so a fast SHA-256 is as strong as a slow hash here and keeps a reconnect storm of
    thousands of receivers cheap to authenticate."""

    __tablename__ = "receiver_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StationAssignment(Base):
    """Which receiver served which station, when: replacing a receiver keeps the history."""

    __tablename__ = "station_assignments"
    __table_args__ = (Index("ix_station_assignments_station_start", "station_id", "start_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("stations.id", ondelete="RESTRICT"))
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="RESTRICT"), index=True)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(500))
