"""What the alerts API takes and gives."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_service.alerts.rules import RuleKind, Severity
from fleet_service.db import ID_MAX
from fleet_service.errors import BilingualValueError


class IncidentOut(BaseModel):
    id: int
    kind: RuleKind
    severity: Severity
    scope: str
    receiver_id: str | None
    station_id: int | None
    region_id: int | None
    state: str
    parent_id: int | None
    suppressed_by: str | None
    summary: str
    value: str | None
    detail: dict[str, Any] | None
    started_at: datetime
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    note: str | None


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    note: str | None = Field(default=None, max_length=2000)


class RuleOut(BaseModel):
    kind: RuleKind
    severity: Severity
    pending_s: int
    hold_s: int
    threshold: float | None
    enabled: bool
    group_wait_s: int
    # Where each field's value comes from: "default", or the region id that set it (0: the
    # whole service).
    source: dict[str, str]


class RuleIn(BaseModel):
    """Fields left out keep what the region above (or the default) says."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity | None = None
    pending_s: int | None = Field(default=None, ge=0, le=7 * 86400)
    hold_s: int | None = Field(default=None, ge=0, le=7 * 86400)
    threshold: float | None = Field(default=None, ge=-1000, le=1000, allow_inf_nan=False)
    enabled: bool | None = None
    group_wait_s: int | None = Field(default=None, ge=0, le=3600,
                                     description="how long a receiver's own incident waits, past the pending time, "
                                                 "for its neighbours to make a group of it")


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receiver_id: str | None = Field(default=None, max_length=64)
    station_id: int | None = Field(default=None, ge=1, le=ID_MAX)
    region_id: int | None = Field(default=None, ge=1, le=ID_MAX)
    kinds: list[RuleKind] | None = Field(default=None, min_length=1, max_length=len(RuleKind))
    reason: str = Field(min_length=1, max_length=500)
    starts_at: datetime | None = None
    ends_at: datetime

    @model_validator(mode="after")
    def one_subject(self) -> SilenceIn:
        if sum(x is not None for x in (self.receiver_id, self.station_id, self.region_id)) != 1:
            raise BilingualValueError("cần đúng một trong receiver_id, station_id, region_id",
                                      "exactly one of receiver_id, station_id, region_id")
        if self.starts_at is not None and self.ends_at <= self.starts_at:
            raise BilingualValueError("ends_at phải sau starts_at", "ends_at must be after starts_at")
        return self


class SilenceOut(BaseModel):
    id: int
    receiver_id: str | None
    station_id: int | None
    region_id: int | None
    kinds: list[str] | None
    reason: str
    starts_at: datetime
    ends_at: datetime
    created_by: str
    created_at: datetime


class EscalationStep(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_min: int = Field(ge=0, le=7 * 24 * 60, description="minutes after the incident was raised")
    to: str = Field(pattern="^(on_call|next|engineers|all)$",
                    description="on_call, next (the next in the rotation), engineers, or all")


class CrewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    region_id: int | None = Field(default=None, ge=1, le=ID_MAX, description="none: the whole service's crew")
    rotation_start: datetime | None = Field(default=None, description="when the first member's turn began")
    rotation_days: int = Field(default=7, ge=1, le=90)
    escalation: list[EscalationStep] | None = Field(default=None, min_length=1, max_length=10)
    reminder_min: int = Field(default=60, ge=0, le=7 * 24 * 60, description="0: no reminders")


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    position: int = Field(default=0, ge=0, le=1000)
    engineer: bool = False
    channels: list[str] = Field(min_length=1, max_length=10,
                                description="apprise URLs: mailto://, tgram://, json:// (Zalo or SMS gateway), smpp://")


class MemberOut(BaseModel):
    id: int
    name: str
    position: int
    engineer: bool
    channels: list[str] = Field(description="without passwords or tokens")
    active: bool


class CrewOut(BaseModel):
    id: int
    name: str
    region_id: int | None
    rotation_start: datetime
    rotation_days: int
    escalation: list[dict[str, Any]]
    reminder_min: int
    members: list[MemberOut]
    on_call: str | None


class NotificationOut(BaseModel):
    id: int
    incident_id: int
    reason: str
    recipient: str
    channel: str = Field(description="without passwords or tokens")
    state: str
    attempts: int
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    acknowledged_with_link: bool
