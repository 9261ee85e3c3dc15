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
