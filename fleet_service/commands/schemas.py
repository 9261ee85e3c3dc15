"""What the commands API takes and gives."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet_service.db import RowId
from fleet_service.errors import BilingualValueError
from fleet_service.protocol.messages import URL_MAX, CommandOp, Priority, ReceiverSettings

# How long a command waits for an offline receiver unless the caller says otherwise. A play
# or stop is about now; a config change or a schedule should reach a receiver that was off
# for a long weekend.
DEFAULT_EXPIRY_S = {
    CommandOp.PLAY: 15 * 60,
    CommandOp.STOP: 15 * 60,
    CommandOp.VOLUME: 60 * 60,
    CommandOp.REBOOT: 60 * 60,
    CommandOp.CONFIG: 7 * 86400,
    CommandOp.SCHEDULE: 30 * 86400,
}
MAX_EXPIRY_S = 90 * 86400


class Target(BaseModel):
    """Exactly one of receiver, station, region, or fleet=true."""

    model_config = ConfigDict(extra="forbid")

    receiver: str | None = None
    station: RowId | None = None
    region: RowId | None = None
    fleet: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> Target:
        given = [self.receiver is not None, self.station is not None, self.region is not None, self.fleet]
        if sum(given) != 1:
            raise BilingualValueError("cần đúng một trong receiver, station, region hoặc fleet=true",
                                      "give exactly one of receiver, station, region, or fleet=true")
        return self


class CommandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Target
    op: Literal[CommandOp.PLAY, CommandOp.STOP, CommandOp.VOLUME, CommandOp.REBOOT, CommandOp.CONFIG]
    priority: Priority = Priority.NORMAL
    url: str | None = Field(default=None, max_length=URL_MAX)
    duration_s: int | None = Field(default=None, ge=1, le=86400)
    volume: int | None = Field(default=None, ge=0, le=100)
    settings: ReceiverSettings | None = None
    expires_in_s: int | None = Field(default=None, ge=1, le=MAX_EXPIRY_S)
    note: str | None = Field(default=None, max_length=500)

    @model_validator(mode="after")
    def _fields_of_op(self) -> CommandCreate:
        need = {CommandOp.PLAY: "url", CommandOp.VOLUME: "volume", CommandOp.CONFIG: "settings"}.get(self.op)
        if need is not None and getattr(self, need) is None:
            raise BilingualValueError(f"lệnh '{self.op.value}' cần trường '{need}'",
                                      f"op {self.op.value!r} needs {need!r}")
        return self


class CommandOut(BaseModel):
    id: str
    op: str
    priority: str
    params: dict[str, Any]
    target_kind: str
    target_ref: str
    target_name: str
    issued_by: str
    issued_at: datetime
    expires_at: datetime
    note: str | None
    targets: int
    # Targets by status (pending, sent, accepted, done, failed, rejected, expired, superseded).
    progress: dict[str, int]


class TargetOut(BaseModel):
    receiver_id: str
    status: str
    reason: str | None
    reason_text: str | None = Field(default=None, description="the reason explained (Vietnamese / English)")
    deliveries: int
    first_sent_at: datetime | None
    accepted_at: datetime | None
    finished_at: datetime | None
