"""Bytes of firmware served to each receiver, per release: what a rollout cost on the 4G link,
resumed downloads included."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class FirmwareDownload(Base):
    __tablename__ = "firmware_downloads"

    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("firmware_releases.id", ondelete="CASCADE"), primary_key=True)
    bytes_served: Mapped[int] = mapped_column(BigInteger)
    requests: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)
