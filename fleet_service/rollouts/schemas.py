"""Rollouts as the API and the CLI take and show them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet_service.db import ID_MAX
from fleet_service.rollouts.plan import ALL_DAYS, MAX_WAVES

RECEIVER_LIST_MAX = 10_000


class WindowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(max_length=8, description="HH:MM, local time (Asia/Ho_Chi_Minh)")
    end: str = Field(max_length=8, description="HH:MM; not after start: the next day")
    days: int = Field(default=ALL_DAYS, ge=1, le=ALL_DAYS, description="days it opens, bit 0 Monday … bit 6 Sunday")


class TargetIn(BaseModel):
    """Which receivers: a region's subtree, a station, or a list; narrowed, if given, to those
    running ``from_version``. None of the three: the caller's whole scope."""

    model_config = ConfigDict(extra="forbid")

    region_id: int | None = Field(default=None, ge=1, le=ID_MAX)
    station_id: int | None = Field(default=None, ge=1, le=ID_MAX)
    receiver_ids: list[str] | None = Field(default=None, min_length=1, max_length=RECEIVER_LIST_MAX)
    from_version: str | None = Field(default=None, max_length=64)


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    release_id: int = Field(ge=1, le=ID_MAX)
    target: TargetIn = Field(default_factory=TargetIn)
    waves: list[str] = Field(default=["3", "10%", "100%"], min_length=1, max_length=MAX_WAVES)
    success_percent: int = Field(default=90, ge=1, le=100)
    error_percent: int = Field(default=20, ge=0, le=100)
    min_finished: int = Field(default=5, ge=1, le=100_000)
    step_timeout_s: int = Field(default=1800, ge=60, le=7 * 86_400)
    per_minute: int = Field(default=60, ge=1, le=100_000)
    jitter_s: int = Field(default=30, ge=0, le=3600)
    window: WindowIn | None = None
    force: bool = Field(default=False, description="allow a downgrade")


class WaveOut(BaseModel):
    wave: int
    size: int
    counts: dict[str, int]


class RolloutOut(BaseModel):
    id: int
    name: str
    release_id: int
    version: str
    hardware: str
    state: str
    state_reason: str | None
    target_summary: str
    waves: list[str]
    current_wave: int
    success_percent: int
    error_percent: int
    min_finished: int
    step_timeout_s: int
    per_minute: int
    jitter_s: int
    window: WindowIn | None
    force: bool
    creator_name: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    counts: dict[str, int]
    progress: list[WaveOut]


class TargetOut(BaseModel):
    receiver_id: str
    wave: int
    state: str
    percent: int | None
    reason: str | None
    from_version: str | None
    offered_at: datetime | None
    state_at: datetime
    attempts: int
    command_id: str | None = Field(default=None, description="the update command of the latest offer")
    fetched: int | None = Field(default=None, description="bytes the receiver fetched for this update")


class RetryOut(BaseModel):
    retried: int = Field(description="failed and rolled-back receivers put back to be offered again")
    rollout: RolloutOut


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=300)
