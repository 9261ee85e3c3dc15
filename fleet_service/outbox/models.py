"""The outbox: one row per side effect still to apply."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class OutboxEntry(Base):
    """A side effect recorded in the same transaction as the change that calls for it, so that
    it cannot be lost between the commit and its application, whichever process made the
    change (an API process, the CLI) and whichever applies it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    # What it is about, e.g. a receiver id.
    subject: Mapped[str] = mapped_column(String(100))
    # JSON. Holds a secret (a receiver's new password, which Mosquitto needs) only until the
    # entry is applied: it is then emptied.
    payload: Mapped[str] = mapped_column(Text, default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    available_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(default=0)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_outbox_pending", "done_at", "id"),)
