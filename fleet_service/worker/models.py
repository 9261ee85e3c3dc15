"""The leader lease."""

from __future__ import annotations

from datetime import datetime

from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class WorkerLease(Base):
    """Who drives the workflows: one row per lease, held until ``expires_at`` unless renewed.
    A process that dies stops renewing, and another takes the lease once it has expired."""

    __tablename__ = "worker_leases"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkerStatus(Base):
    """What the leading worker reports of itself (MQTT connection, ingest and outbox counters),
    written every few seconds, so that any API process can answer ``GET /ingest/status``."""

    __tablename__ = "worker_status"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    status: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
