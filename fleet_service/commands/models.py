"""Commands and their per-receiver outcome. Together they are the audit log: who sent what to
whom, when, and what each receiver answered."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime, utcnow


class TargetKind(StrEnum):
    RECEIVER = "receiver"
    STATION = "station"
    REGION = "region"
    FLEET = "fleet"


class TargetStatus(StrEnum):
    """Where one receiver's copy of a command stands. The last five are final."""

    PENDING = "pending"    # not sent yet: the receiver is offline (sent at its next birth)
    SENT = "sent"          # published to the receiver, no answer yet
    ACCEPTED = "accepted"  # the receiver took it and is carrying it out
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"
    EXPIRED = "expired"    # expired before a final answer (or the receiver said so)
    SUPERSEDED = "superseded"  # a newer command of the same kind replaced it before delivery

    @property
    def final(self) -> bool:
        return self not in _OPEN


_OPEN = frozenset({TargetStatus.PENDING, TargetStatus.SENT, TargetStatus.ACCEPTED})
OPEN_STATUSES = tuple(s.value for s in _OPEN)


class Command(Base):
    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_issued_at", "issued_at"),)

    # Short random id, also the protocol's command id (so a receiver's ack names it).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    op: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    # The op's own fields, as sent on the wire (url, dur, vol, set, ver/tz/slots).
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    target_kind: Mapped[str] = mapped_column(String(16))
    # The target by id only, the one of its kind (none for the whole fleet): a copy of its
    # region path went stale when a region moved. Scope checks join through the target's
    # region as it is now (fleet_service.scope). No foreign key: the log outlives the target.
    target_region_id: Mapped[int | None] = mapped_column(Integer, index=True)
    target_station_id: Mapped[int | None] = mapped_column(Integer, index=True)
    target_receiver_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # Its name when the command was sent, as the log shows it.
    target_name: Mapped[str] = mapped_column(String(300))
    issued_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    issuer_name: Mapped[str] = mapped_column(String(100))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    note: Mapped[str | None] = mapped_column(String(500))

    @property
    def target_ref(self) -> str:
        """Receiver id, station id, region id, or "" for the whole fleet (the API's form)."""
        if self.target_receiver_id is not None:
            return self.target_receiver_id
        if self.target_station_id is not None:
            return str(self.target_station_id)
        return str(self.target_region_id) if self.target_region_id is not None else ""


class CommandTarget(Base):
    __tablename__ = "command_targets"
    __table_args__ = (Index("ix_command_targets_receiver_status", "receiver_id", "status"),)

    command_id: Mapped[str] = mapped_column(ForeignKey("commands.id", ondelete="CASCADE"), primary_key=True)
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=TargetStatus.PENDING.value)
    reason: Mapped[str | None] = mapped_column(String(64))
    deliveries: Mapped[int] = mapped_column(Integer, default=0)
    first_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
