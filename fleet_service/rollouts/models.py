"""Rollouts and each receiver's place in one. The whole workflow's state lives here: the leading
worker reads it every turn and any process may answer from it, so a restart of any process
loses nothing."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime, utcnow


class RolloutState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"        # by a person, or by itself when a wave's failures passed the threshold
    COMPLETED = "completed"  # every receiver finished
    ABORTED = "aborted"      # by a person: nothing more is offered
    STOPPED = "stopped"      # its release was withdrawn

    @property
    def final(self) -> bool:
        return self in (RolloutState.COMPLETED, RolloutState.ABORTED, RolloutState.STOPPED)


class TargetState(StrEnum):
    """One receiver's update, as the receiver reported it (protocol 1.2) or as the worker
    decided. The last five are final."""

    PENDING = "pending"          # its wave has not reached it, or it was offline
    OFFERED = "offered"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLING = "installing"
    REBOOTING = "rebooting"
    DEFERRED = "deferred"        # busy broadcasting: installs after the slot or bulletin
    CONFIRMED = "confirmed"
    FAILED = "failed"            # with a reason (the receiver's, or "timeout")
    ROLLED_BACK = "rolled_back"  # the new version did not confirm; the old one runs again
    CANCELLED = "cancelled"      # the rollout ended before this receiver switched
    SKIPPED = "skipped"          # runs the release already, or may not take it

    @property
    def final(self) -> bool:
        return self in FINAL_TARGET_STATES


FINAL_TARGET_STATES = frozenset({TargetState.CONFIRMED, TargetState.FAILED, TargetState.ROLLED_BACK,
                                 TargetState.CANCELLED, TargetState.SKIPPED})


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    release_id: Mapped[int] = mapped_column(ForeignKey("firmware_releases.id", ondelete="RESTRICT"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    # Why it paused or stopped, both languages ("vi / en").
    state_reason: Mapped[str | None] = mapped_column(String(500))
    # What was targeted, as it read when created (the receivers themselves are the targets).
    target_summary: Mapped[str] = mapped_column(String(500))
    waves: Mapped[list[str]] = mapped_column(JSON)  # as given: ["3", "10%", "100%"]
    wave_count: Mapped[int] = mapped_column(Integer)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    success_percent: Mapped[int] = mapped_column(Integer)
    error_percent: Mapped[int] = mapped_column(Integer)
    min_finished: Mapped[int] = mapped_column(Integer)
    # A receiver that stays this long in one step (offered, downloading …) has failed.
    step_timeout_s: Mapped[int] = mapped_column(Integer)
    per_minute: Mapped[int] = mapped_column(Integer)
    jitter_s: Mapped[int] = mapped_column(Integer)
    # The maintenance window, local time; none: any time.
    window_start: Mapped[str | None] = mapped_column(String(5))
    window_end: Mapped[str | None] = mapped_column(String(5))
    window_days: Mapped[int | None] = mapped_column(Integer)
    force: Mapped[bool] = mapped_column(Boolean, default=False)  # downgrades allowed
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    creator_name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Pacing: offers made since this time (reset on resume).
    paced_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    offered_since_paced: Mapped[int] = mapped_column(Integer, default=0)


class RolloutTarget(Base):
    __tablename__ = "rollout_targets"
    __table_args__ = (Index("ix_rollout_targets_rollout_wave", "rollout_id", "wave"),
                      Index("ix_rollout_targets_receiver", "receiver_id", "state"))

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True)
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    wave: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    percent: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(200))
    # The version it ran when the rollout was created, and what it reported since.
    from_version: Mapped[str | None] = mapped_column(String(64))
    offered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The update command of the latest offer (its acknowledgement and status name it).
    command_id: Mapped[str | None] = mapped_column(String(32))
    # Anything else the receiver said about this update (bytes fetched, resumes).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
