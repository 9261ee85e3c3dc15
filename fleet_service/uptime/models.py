"""The uptime ledger: every connectivity transition as an exact interval."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class Connectivity(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class TransitionCause(StrEnum):
    BIRTH = "birth"            # the receiver announced a new session
    SHUTDOWN = "shutdown"      # the receiver said goodbye
    WILL = "will"              # the broker published the receiver's Last Will
    SILENT = "silent"          # nothing heard for the inactivity timeout
    RESUMED = "resumed"        # heard again within the same session after a silence
    RECONCILED = "reconciled"  # state found changed when the service (re)connected
    REVOKED = "revoked"        # credentials revoked: disconnected by the service


class ConnectivityInterval(Base):
    """[start_at, end_at) during which a receiver was online or offline. end_at is NULL for the
    interval that is still open. Exactly one open interval per receiver once it was first seen;
    the time before is not part of its service life."""

    __tablename__ = "connectivity_intervals"
    __table_args__ = (
        Index("ix_connectivity_receiver_start", "receiver_id", "start_at"),
        Index("ix_connectivity_station_start", "station_id", "start_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="RESTRICT"))
    # The station the receiver served when the interval began: a station's history survives
    # the replacement of its receivers.
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id", ondelete="RESTRICT"))
    state: Mapped[str] = mapped_column(String(8))
    session: Mapped[int | None] = mapped_column(BigInteger)
    start_at: Mapped[datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    start_cause: Mapped[str] = mapped_column(String(16))
    end_cause: Mapped[str | None] = mapped_column(String(16))


class ReceiverLiveState(Base):
    """Each receiver's current connectivity, latest telemetry and play status as the leading
    worker sees them, written in batches (at most ingest.service.LIVE_STATE_FLUSH_S behind):
    what every API process, the CLI and the worker itself after a restart read, instead of one
    process's memory. ``heard_at`` is the last message really heard: after a restart, an
    outage that began while the service was away is never recorded from earlier than that."""

    __tablename__ = "receiver_live_state"

    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    online: Mapped[bool]
    session: Mapped[int | None] = mapped_column(BigInteger)
    heard_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The latest telemetry report (NULL before the first one).
    telemetry_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signal_dbm: Mapped[int | None]
    temperature_c: Mapped[float | None]
    supply_v: Mapped[float | None]
    amplifier: Mapped[str | None] = mapped_column(String(16))
    stream: Mapped[str | None] = mapped_column(String(16))
    firmware: Mapped[str | None] = mapped_column(String(64))
    # Receiver clock minus service clock, seconds (positive: the receiver runs ahead).
    clock_skew_s: Mapped[float | None]
    # The schedule version the receiver last said it holds (telemetry or play status).
    schedule_version: Mapped[int | None] = mapped_column(BigInteger)
    # What it last said it plays (its retained play status), as ingest.schemas.PlayingOut.
    playing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Its hardware family, as its last birth named it (protocol 1.2; NULL before).
    hardware: Mapped[str | None] = mapped_column(String(40))
