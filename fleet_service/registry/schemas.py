"""What the registry API reads and writes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet_service.db import RowId
from fleet_service.errors import BilingualValueError
from fleet_service.registry.models import ReceiverStatus
from fleet_service.registry.names import normalise_name


def _written_name(value: object) -> object:
    """Names are kept in one form (NFC, trimmed), so that the same name typed on two keyboards
    is one name; a name of spaces only is no name."""
    if not isinstance(value, str):
        return value  # pydantic refuses it as it should
    written = normalise_name(value)
    if value and not written:  # an empty one is told by the length check, as any empty field
        raise BilingualValueError("tên không được để trống", "the name must not be blank")
    return written


_normalised_name = field_validator("name", mode="before")(_written_name)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- regions -----------------------------------------------------------------------------

class RegionCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["Hùng Sơn"])

    _name = _normalised_name
    level: str = Field(min_length=1, max_length=50, description="tỉnh, huyện, xã, thị trấn, ... (free text)")
    code: str | None = Field(default=None, max_length=50, description="stable code, unique")
    parent_id: RowId | None = None


class RegionUpdate(BaseModel):
    """Rename a region, or change its level or code. Fields left out stay as they are."""

    name: str | None = Field(default=None, min_length=1, max_length=200)

    _name = _normalised_name
    level: str | None = Field(default=None, min_length=1, max_length=50)
    code: str | None = Field(default=None, max_length=50)


class RegionMove(BaseModel):
    parent_id: RowId | None = Field(description="new parent; null makes the region a root")


class RegionOut(_Out):
    id: int
    parent_id: int | None
    name: str
    level: str
    code: str | None
    path: str


class ImportSummary(BaseModel):
    regions_created: int = 0
    regions_updated: int = 0
    stations_created: int = 0
    stations_updated: int = 0


# --- stations ----------------------------------------------------------------------------

class StationCreate(BaseModel):
    region_id: RowId
    name: str = Field(min_length=1, max_length=200, examples=["Đài truyền thanh Hùng Sơn"])

    _name = _normalised_name
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=500)
    notes: str | None = None


class StationUpdate(BaseModel):
    """Fields left out stay as they are; a field set to null is cleared."""

    region_id: RowId | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)

    _name = _normalised_name
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=500)
    notes: str | None = None


class StationOut(_Out):
    id: int
    region_id: int
    name: str
    latitude: float | None
    longitude: float | None
    address: str | None
    notes: str | None
    created_at: datetime


class AssignmentOut(_Out):
    id: int
    station_id: int
    receiver_id: str
    start_at: datetime
    end_at: datetime | None
    note: str | None


# --- receivers ---------------------------------------------------------------------------

class ReceiverCreate(BaseModel):
    id: str = Field(
        max_length=64,
        description="MQTT username, client id and topic level: 1-64 letters, digits, '-' or '_'",
        examples=["dt-hungson-01"],
    )
    hardware_id: str = Field(min_length=1, max_length=100, description="IMEI or MAC; unique",
                             examples=["860123456789012"])
    station_id: RowId | None = None
    firmware_version: str | None = Field(default=None, max_length=32)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    notes: str | None = None


class ReceiverUpdate(BaseModel):
    """Fields left out stay as they are. Setting ``station_id`` moves the receiver (null takes
    it off its station); the station's history records the move."""

    hardware_id: str | None = Field(default=None, min_length=1, max_length=100)
    station_id: RowId | None = None
    firmware_version: str | None = Field(default=None, max_length=32)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    notes: str | None = None


class ReceiverOut(_Out):
    id: str
    hardware_id: str
    station_id: int | None
    status: ReceiverStatus
    firmware_version: str | None
    latitude: float | None
    longitude: float | None
    notes: str | None
    created_at: datetime


class NewReceiver(BaseModel):
    """The receiver that takes over a station in a replacement (its station is implied)."""

    id: str = Field(max_length=64)
    hardware_id: str = Field(min_length=1, max_length=100)
    firmware_version: str | None = Field(default=None, max_length=32)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    notes: str | None = None


class ReplaceRequest(BaseModel):
    old_receiver_id: str
    new: NewReceiver
    note: str | None = Field(default=None, max_length=400, description="why, e.g. lightning damage")


class ReplaceResult(BaseModel):
    retired: ReceiverOut
    new: ReceiverOut


class ProvisionedCredential(BaseModel):
    """Shown once: only a hash is kept, so a lost password means provisioning again."""

    receiver_id: str
    mqtt_username: str
    mqtt_password: str
    created_at: datetime
    # False when the broker has not taken the new password yet (e.g. it is down): the
    # password is saved and the service applies it as soon as the broker answers.
    broker_applied: bool = True
    note: str | None = None


# --- inventory import (YAML or JSON files; see seed_data/) -------------------------------

class StationImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)

    _name = _normalised_name
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = Field(default=None, max_length=500)
    notes: str | None = None


class RegionImport(BaseModel):
    """One unit of the tree; ``code`` identifies it across imports."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=50)
    name: str = Field(min_length=1, max_length=200)

    _name = _normalised_name
    level: str = Field(min_length=1, max_length=50)
    stations: list[StationImport] = []
    children: list[RegionImport] = []


class InventoryImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    regions: list[RegionImport]
