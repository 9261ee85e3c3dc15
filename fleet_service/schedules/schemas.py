"""What the schedules API takes and gives."""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_service.db import RowId
from fleet_service.errors import BilingualValueError
from fleet_service.protocol.messages import URL_MAX, Priority, ScheduleSlot, SCHEDULE_MAX_SLOTS

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class SlotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(examples=["05:30"], description="HH:MM or HH:MM:SS, Vietnam time")
    end: str = Field(examples=["06:00"])
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(DAY_NAMES), description="days of the week it plays")
    url: str = Field(max_length=URL_MAX)
    priority: Priority = Priority.NORMAL
    valid_from: date | None = None
    valid_to: date | None = None
    volume: int | None = Field(default=None, ge=0, le=100)
    label: str | None = Field(default=None, max_length=200)

    @field_validator("days")
    @classmethod
    def _some_day(cls, value: list[str]) -> list[str]:
        if not value:
            raise BilingualValueError("cần ít nhất một ngày", "at least one day")
        return value

    @model_validator(mode="after")
    def _valid_on_the_wire(self) -> SlotIn:
        self.protocol_slot("check")  # the protocol's own rules: times, order, URL
        return self

    @property
    def day_mask(self) -> int:
        return sum(1 << DAY_NAMES.index(day) for day in set(self.days))

    def protocol_slot(self, slot_id: str) -> ScheduleSlot:
        return ScheduleSlot(slot_id=slot_id, start=self.start, end=self.end, days=self.day_mask, url=self.url,
                            priority=self.priority, valid_from=self.valid_from, valid_to=self.valid_to,
                            volume=self.volume)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    station: RowId | None = None
    region: RowId | None = None
    slots: list[SlotIn] = Field(min_length=1, max_length=SCHEDULE_MAX_SLOTS)

    @model_validator(mode="after")
    def _one_target(self) -> ScheduleCreate:
        if (self.station is None) == (self.region is None):
            raise BilingualValueError("cần đúng một trong station hoặc region",
                                      "give exactly one of station or region")
        return self


class SlotsReplace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slots: list[SlotIn] = Field(min_length=1, max_length=SCHEDULE_MAX_SLOTS)


class SlotOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    start: str
    end: str
    days: list[str]
    url: str
    priority: str
    valid_from: date | None
    valid_to: date | None
    volume: int | None
    label: str | None


class ScheduleOut(BaseModel):
    id: int
    name: str
    target_kind: str
    target_id: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    slots: list[SlotOut]
    # The schedule commands this change sent (one per distinct resulting receiver schedule).
    commands: list[str] = []


class ReceiverScheduleOut(BaseModel):
    receiver_id: str
    expected_version: int | None = Field(description="the version last sent to it")
    held_version: int | None = Field(description="the version it last reported (telemetry or play status)")
    in_step: bool
    command_id: str | None
    slots: list[dict[str, object]] = Field(description="the slots it should hold, as sent")


def days_of(mask: int) -> list[str]:
    return [name for i, name in enumerate(DAY_NAMES) if mask & (1 << i)]
