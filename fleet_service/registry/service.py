"""Registry logic: the region tree, stations, receivers, their MQTT credentials and history.

Functions take ``scope``, the caller's region scope (fleet_service.scope; None: the whole fleet). Whatever
lies outside it is reported as not found, so that its existence does not leak. Nothing here
commits: the request or CLI command does. A change of a receiver's login records its side
effect on the broker in the outbox, in the same transaction (fleet_service/outbox).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet_service.auth.security import hashes_match, new_token, token_hash
from fleet_service.db import utcnow
from fleet_service.errors import BilingualValueError, Conflict, Forbidden, Invalid, NotFound
from fleet_service.outbox import service as outbox
from fleet_service.protocol import ReceiverId
from fleet_service.registry import repository as repo
from fleet_service.registry.names import same_name
from fleet_service.registry.models import (
    Receiver,
    ReceiverCredential,
    ReceiverStatus,
    Region,
    Station,
    StationAssignment,
)
from fleet_service.scope import RegionScope, ScopeLike
from fleet_service.registry.schemas import (
    ImportSummary,
    InventoryImport,
    NewReceiver,
    ProvisionedCredential,
    ReceiverCreate,
    ReceiverUpdate,
    RegionCreate,
    RegionImport,
    RegionUpdate,
    StationCreate,
    StationUpdate,
)

# Bytes of randomness in a receiver's MQTT password: 160 bits, 27 URL-safe characters, short
# enough to type into a receiver's set-up page by hand.
RECEIVER_SECRET_BYTES = 20


# --- regions -----------------------------------------------------------------------------

def get_region(session: Session, region_id: int, *, scope: ScopeLike = None) -> Region:
    region = repo.get_region(session, region_id, scope)
    if region is None:
        raise NotFound(f"Không tìm thấy đơn vị hành chính {region_id}", f"Region {region_id} not found")
    return region


def list_regions(session: Session, *, root_id: int | None = None, scope: ScopeLike = None) -> Sequence[Region]:
    """Every region the caller may see, or the subtree of ``root_id`` (itself included)."""
    under = get_region(session, root_id, scope=scope).path if root_id is not None else None
    return repo.list_regions(session, under=under, scope=scope)


def _parent_for(session: Session, parent_id: int | None, scope: ScopeLike) -> Region | None:
    if parent_id is None:
        if RegionScope.of(scope).restricted:
            raise Forbidden(
                "Chỉ người quản trị toàn mạng mới tạo được đơn vị cấp cao nhất",
                "Only a whole-fleet administrator can make a top-level region",
            )
        return None
    return get_region(session, parent_id, scope=scope)


def _check_code_free(session: Session, code: str | None, region_id: int | None = None) -> None:
    if code is None:
        return
    holder = repo.get_region_by_code(session, code)
    if holder is not None and holder.id != region_id:
        raise Conflict(
            f"Mã đơn vị '{code}' đã được dùng cho {holder.name}",
            f"Region code '{code}' is already used by {holder.name}",
        )


def _check_region_name_free(session: Session, name: str, parent: Region | None, region_id: int | None = None) -> None:
    """Two units under one parent never share a name (in NFC, case aside): a list, a report or
    an operator could not tell them apart."""
    for sibling in repo.child_regions(session, parent.id if parent else None):
        if sibling.id != region_id and same_name(sibling.name, name):
            where_vi = f"trong {parent.name}" if parent else "ở cấp cao nhất"
            where_en = f"under {parent.name}" if parent else "at the top level"
            raise Conflict(f"Đã có đơn vị '{sibling.name}' (ID {sibling.id}) {where_vi}",
                           f"There is already a region '{sibling.name}' (id {sibling.id}) {where_en}")


def create_region(session: Session, data: RegionCreate, *, scope: ScopeLike = None) -> Region:
    parent = _parent_for(session, data.parent_id, scope)
    _check_code_free(session, data.code)
    _check_region_name_free(session, data.name, parent)
    region = Region(name=data.name, level=data.level, code=data.code, parent_id=parent.id if parent else None)
    return repo.add_region(session, region, parent)


def update_region(session: Session, region_id: int, data: RegionUpdate, *, scope: ScopeLike = None) -> Region:
    """Rename (or change level or code); its place in the tree stays."""
    region = get_region(session, region_id, scope=scope)
    # name and level cannot be cleared; code can.
    changes: dict[str, Any] = {k: v for k, v in data.model_dump(exclude_unset=True).items()
                               if v is not None or k == "code"}
    if "code" in changes:
        _check_code_free(session, changes["code"], region.id)
    if "name" in changes:
        _check_region_name_free(session, changes["name"], region.parent, region.id)
    for field, value in changes.items():
        setattr(region, field, value)
    session.flush()
    outbox.registry_changed(session, f"region:{region.id}")
    return region


def move_region(session: Session, region_id: int, parent_id: int | None, *, scope: ScopeLike = None) -> Region:
    """Re-parent a region; the paths of its whole subtree follow."""
    region = get_region(session, region_id, scope=scope)
    parent = _parent_for(session, parent_id, scope)
    _check_region_name_free(session, region.name, parent, region.id)
    _move(session, region, parent)
    return region


def _move(session: Session, region: Region, parent: Region | None) -> None:
    if parent is not None and RegionScope(region.path).contains(parent.path):
        raise Invalid(
            f"Không thể chuyển {region.name} vào chính nó hoặc một đơn vị trực thuộc nó",
            f"Cannot move {region.name} under itself or one of its own subregions",
        )
    old_prefix = region.path
    new_prefix = f"{parent.path if parent else '/'}{region.id}/"
    region.parent_id = parent.id if parent else None
    session.flush()
    if new_prefix != old_prefix:
        repo.rewrite_subtree_paths(session, old_prefix, new_prefix)
        outbox.registry_changed(session, f"region:{region.id}")


def delete_region(session: Session, region_id: int, *, scope: ScopeLike = None) -> None:
    region = get_region(session, region_id, scope=scope)
    if repo.region_has_children(session, region.id):
        raise Conflict(
            f"{region.name} còn đơn vị trực thuộc: hãy chuyển hoặc xoá chúng trước",
            f"{region.name} still has subregions: move or delete them first",
        )
    if repo.region_has_stations(session, region.id):
        raise Conflict(
            f"{region.name} còn đài truyền thanh: hãy chuyển hoặc xoá chúng trước",
            f"{region.name} still has stations: move or delete them first",
        )
    try:
        with session.begin_nested():
            session.delete(region)
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"{region.name} vẫn đang được sử dụng (ví dụ: là phạm vi của người dùng)",
            f"{region.name} is still referred to (for example as a user's scope)",
        ) from None


# --- stations ----------------------------------------------------------------------------

def get_station(session: Session, station_id: int, *, scope: ScopeLike = None) -> Station:
    station = repo.get_station(session, station_id, scope)
    if station is None:
        raise NotFound(f"Không tìm thấy đài truyền thanh {station_id}", f"Station {station_id} not found")
    return station


def list_stations(session: Session, *, region_id: int | None = None, scope: ScopeLike = None) -> Sequence[Station]:
    """Stations of the caller's scope, or of a region's subtree."""
    under = get_region(session, region_id, scope=scope).path if region_id is not None else None
    return repo.list_stations(session, under=under, scope=scope)


def _check_station_name_free(session: Session, name: str, region: Region, station_id: int | None = None) -> None:
    """Two stations of one region never share a name (in NFC, case aside): the importer finds
    stations by name within their region."""
    holder = repo.find_station_by_name(session, region.id, name)
    if holder is not None and holder.id != station_id:
        raise Conflict(f"Đã có đài '{holder.name}' (ID {holder.id}) trong {region.name}",
                       f"There is already a station '{holder.name}' (id {holder.id}) in {region.name}")


def create_station(session: Session, data: StationCreate, *, scope: ScopeLike = None) -> Station:
    region = get_region(session, data.region_id, scope=scope)
    _check_station_name_free(session, data.name, region)
    station = Station(**data.model_dump(exclude={"region_id"}), region_id=region.id)
    session.add(station)
    session.flush()
    return station


def update_station(session: Session, station_id: int, data: StationUpdate, *, scope: ScopeLike = None) -> Station:
    station = get_station(session, station_id, scope=scope)
    changes = data.model_dump(exclude_unset=True)
    # region and name cannot be cleared; the rest can.
    changes: dict[str, Any] = {k: v for k, v in changes.items() if v is not None or k not in ("region_id", "name")}
    if "region_id" in changes:
        changes["region_id"] = get_region(session, changes["region_id"], scope=scope).id
    if "region_id" in changes or "name" in changes:
        region = get_region(session, changes.get("region_id", station.region_id))
        _check_station_name_free(session, changes.get("name", station.name), region, station.id)
    for field, value in changes.items():
        setattr(station, field, value)
    session.flush()
    if "region_id" in changes or "name" in changes:
        outbox.registry_changed(session, f"station:{station.id}")
    return station


def delete_station(session: Session, station_id: int, *, scope: ScopeLike = None) -> None:
    station = get_station(session, station_id, scope=scope)
    if repo.station_has_receivers_or_history(session, station.id):
        raise Conflict(
            f"{station.name} đã có thiết bị thu hoặc lịch sử: không xoá được, để giữ lịch sử",
            f"{station.name} has receivers or a history: it cannot be deleted, its history is kept",
        )
    session.delete(station)
    session.flush()


def station_history(session: Session, station_id: int, *, scope: ScopeLike = None) -> Sequence[StationAssignment]:
    """Which receiver served the station, when, oldest first."""
    station = get_station(session, station_id, scope=scope)
    return repo.station_history(session, station.id)


# --- receivers ---------------------------------------------------------------------------

def get_receiver(session: Session, receiver_id: str, *, scope: ScopeLike = None) -> Receiver:
    receiver = repo.get_receiver(session, receiver_id, scope)
    if receiver is None:
        raise NotFound(f"Không tìm thấy thiết bị thu {receiver_id}", f"Receiver {receiver_id} not found")
    return receiver


def list_receivers(
    session: Session,
    *,
    station_id: int | None = None,
    region_id: int | None = None,
    status: ReceiverStatus | None = None,
    scope: ScopeLike = None,
) -> Sequence[Receiver]:
    under = get_region(session, region_id, scope=scope).path if region_id is not None else None
    return repo.list_receivers(session, station_id=station_id, under=under, status=status, scope=scope)


def _valid_receiver_id(value: str) -> str:
    try:
        return str(ReceiverId(value))
    except ValueError:
        raise Invalid(
            f"Mã thiết bị '{value}' không hợp lệ: dùng 1–64 ký tự gồm chữ không dấu, số, '-' hoặc '_'",
            f"Invalid receiver id '{value}': use 1-64 letters (no accents), digits, '-' or '_'",
        ) from None


def _check_hardware_id_free(session: Session, hardware_id: str, receiver_id: str | None = None) -> None:
    holder = repo.get_receiver_by_hardware_id(session, hardware_id)
    if holder is not None and holder.id != receiver_id:
        raise Conflict(
            f"Mã phần cứng '{hardware_id}' đã được đăng ký cho thiết bị {holder.id}",
            f"Hardware id '{hardware_id}' is already registered to receiver {holder.id}",
        )


def _station_or_whole_fleet(session: Session, station_id: int | None, scope: ScopeLike) -> Station | None:
    if station_id is not None:
        return get_station(session, station_id, scope=scope)
    if RegionScope.of(scope).restricted:
        raise Forbidden(
            "Thiết bị thu phải thuộc một đài trong phạm vi của bạn",
            "The receiver must belong to a station within your scope",
        )
    return None


def register_receiver(session: Session, data: ReceiverCreate, *, scope: ScopeLike = None) -> Receiver:
    return _register(session, data, scope, utcnow(), note=None)


def _register(session: Session, data: ReceiverCreate, scope: ScopeLike, now: datetime, note: str | None) -> Receiver:
    receiver_id = _valid_receiver_id(data.id)
    station = _station_or_whole_fleet(session, data.station_id, scope)
    if repo.get_receiver(session, receiver_id) is not None:
        raise Conflict(f"Mã thiết bị '{receiver_id}' đã tồn tại", f"Receiver id '{receiver_id}' already exists")
    _check_hardware_id_free(session, data.hardware_id)
    receiver = Receiver(
        **data.model_dump(exclude={"id", "station_id"}),
        id=receiver_id,
        station_id=None,
        status=ReceiverStatus.ACTIVE.value,
        created_at=now,
    )
    session.add(receiver)
    session.flush()
    _assign(session, receiver, station.id if station else None, now, note)
    return receiver


def _assign(session: Session, receiver: Receiver, station_id: int | None, now: datetime, note: str | None = None) -> None:
    """Put a receiver on a station (or none), closing the old assignment and opening a new one."""
    current = repo.open_assignment(session, receiver.id)
    if current is not None and current.station_id == station_id:
        return
    if current is not None:
        current.end_at = now
    receiver.station_id = station_id
    if station_id is not None:
        session.add(StationAssignment(station_id=station_id, receiver_id=receiver.id, start_at=now, note=note))
    session.flush()
    outbox.registry_changed(session, f"receiver:{receiver.id}")


def update_receiver(session: Session, receiver_id: str, data: ReceiverUpdate, *, scope: ScopeLike = None) -> Receiver:
    receiver = get_receiver(session, receiver_id, scope=scope)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("hardware_id", "") is None:  # cannot be cleared
        del changes["hardware_id"]
    if "hardware_id" in changes:
        _check_hardware_id_free(session, changes["hardware_id"], receiver.id)
    if "station_id" in changes:
        station = _station_or_whole_fleet(session, changes.pop("station_id"), scope)
        new_station_id = station.id if station else None
        if new_station_id != receiver.station_id:
            if receiver.status == ReceiverStatus.RETIRED:
                raise Conflict(
                    f"Thiết bị {receiver.id} đã ngừng sử dụng: không chuyển đài được",
                    f"Receiver {receiver.id} is retired: it cannot be moved to a station",
                )
            _assign(session, receiver, new_station_id, utcnow())
    for field, value in changes.items():
        setattr(receiver, field, value)
    session.flush()
    return receiver


def provision(session: Session, receiver_id: str, *, scope: ScopeLike = None) -> ProvisionedCredential:
    """A new MQTT password for the receiver; earlier ones stop working. The password is in the
    result and nowhere else: only its SHA-256 is stored. A revoked receiver becomes active."""
    receiver = get_receiver(session, receiver_id, scope=scope)
    if receiver.status == ReceiverStatus.RETIRED:
        raise Conflict(
            f"Thiết bị {receiver.id} đã ngừng sử dụng: không cấp mật khẩu được",
            f"Receiver {receiver.id} is retired: it cannot be given a password",
        )
    now = utcnow()
    repo.revoke_credentials(session, receiver.id, now)
    password = new_token(RECEIVER_SECRET_BYTES)
    session.add(ReceiverCredential(receiver_id=receiver.id, secret_hash=token_hash(password), created_at=now))
    receiver.status = ReceiverStatus.ACTIVE.value
    session.flush()
    outbox.receiver_login_set(session, receiver.id, password)
    return ProvisionedCredential(receiver_id=receiver.id, mqtt_username=receiver.id, mqtt_password=password, created_at=now)


def revoke(session: Session, receiver_id: str, *, scope: ScopeLike = None) -> Receiver:
    """Withdraw a receiver's credentials. It stays in the registry, with its history."""
    receiver = get_receiver(session, receiver_id, scope=scope)
    repo.revoke_credentials(session, receiver.id, utcnow())
    if receiver.status == ReceiverStatus.ACTIVE:
        receiver.status = ReceiverStatus.REVOKED.value
    session.flush()
    outbox.receiver_login_removed(session, receiver.id)
    return receiver


def replace_receiver(
    session: Session,
    station_id: int,
    old_receiver_id: str,
    new: NewReceiver,
    *,
    note: str | None = None,
    scope: ScopeLike = None,
) -> tuple[Receiver, Receiver]:
    """The old receiver is retired (credentials revoked, its assignment closed) and the new one
    starts serving the station at the same instant. Returns (old, new). The new receiver still
    needs ``provision``."""
    station = get_station(session, station_id, scope=scope)
    old = get_receiver(session, old_receiver_id, scope=scope)
    if old.station_id != station.id:
        raise Invalid(
            f"Thiết bị {old.id} không thuộc {station.name}",
            f"Receiver {old.id} is not at station {station.name}",
        )
    if old.status == ReceiverStatus.RETIRED:
        raise Conflict(f"Thiết bị {old.id} đã được thay thế trước đó", f"Receiver {old.id} was already retired")
    now = utcnow()
    current = repo.open_assignment(session, old.id)
    if current is not None:
        current.end_at = now
    repo.revoke_credentials(session, old.id, now)
    old.status = ReceiverStatus.RETIRED.value
    session.flush()
    outbox.receiver_login_removed(session, old.id)
    reason = f"thay thế {old.id} / replaces {old.id}" + (f": {note}" if note else "")
    replacement = _register(session, ReceiverCreate(**new.model_dump(), station_id=station.id), scope, now, reason)
    return old, replacement


def verify_receiver_password(session: Session, receiver_id: str, password: str) -> bool:
    """True only for an active receiver with an unrevoked credential matching ``password``.
    Called by the broker at every MQTT login: one indexed query, constant-time comparison."""
    stored = repo.live_credential_hashes(session, receiver_id)
    if not stored:
        return False
    candidate = token_hash(password)
    matches = [hashes_match(candidate, h) for h in stored]
    return any(matches)


# --- inventory import --------------------------------------------------------------------

DEMO_INVENTORY = "seed_data/dai_tu.yaml"


def demo_inventory() -> dict[str, Any]:
    """The Đại Từ demo inventory (seed_data/dai_tu.yaml), parsed."""
    text = resources.files("fleet_service.registry").joinpath(DEMO_INVENTORY).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def import_regions(session: Session, data: Mapping[str, Any]) -> ImportSummary:
    """Load a region tree with its stations (the shape of seed_data/dai_tu.yaml). Idempotent:
    regions are matched by code, stations by name within their region; what exists is
    updated (and moved, if its parent changed), what is missing is created, nothing is
    deleted."""
    try:
        inventory = InventoryImport.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        cause = (first.get("ctx") or {}).get("error")
        vi, en = ((cause.message_vi, cause.message_en) if isinstance(cause, BilingualValueError)
                  else (first["msg"], first["msg"]))
        raise Invalid(
            f"Dữ liệu nhập không hợp lệ tại {where}: {vi}",
            f"Invalid import data at {where}: {en}",
        ) from None
    summary = ImportSummary()
    for node in inventory.regions:
        _import_region(session, node, None, summary)
    return summary


def _import_region(session: Session, node: RegionImport, parent: Region | None, summary: ImportSummary) -> None:
    region = repo.get_region_by_code(session, node.code)
    if region is None:
        _check_region_name_free(session, node.name, parent)
        region = Region(name=node.name, level=node.level, code=node.code, parent_id=parent.id if parent else None)
        repo.add_region(session, region, parent)
        summary.regions_created += 1
    else:
        changed = (region.name, region.level) != (node.name, node.level)
        if changed or region.parent_id != (parent.id if parent else None):
            _check_region_name_free(session, node.name, parent, region.id)
        region.name, region.level = node.name, node.level
        if region.parent_id != (parent.id if parent else None):
            _move(session, region, parent)
            changed = True
        summary.regions_updated += int(changed)
    for item in node.stations:
        station = repo.find_station_by_name(session, region.id, item.name)
        values = item.model_dump(exclude={"name"}, exclude_unset=True)
        if station is None:
            session.add(Station(region_id=region.id, name=item.name, **values))
            session.flush()  # the next station of the file is checked against this one
            summary.stations_created += 1
        elif station.name != item.name or any(getattr(station, k) != v for k, v in values.items()):
            # Matched by name in NFC, case aside: the file's spelling is kept.
            station.name = item.name
            for k, v in values.items():
                setattr(station, k, v)
            summary.stations_updated += 1
    session.flush()
    for child in node.children:
        _import_region(session, child, region, summary)


# --- what a registry change touches ---------------------------------------------------------

def active_receivers_of(session: Session, subject: str) -> list[str]:
    """The active receivers a registry change recorded for ``subject`` ("region:<id>",
    "station:<id>" or "receiver:<id>", see outbox.OutboxKind.REGISTRY_CHANGED) touches now."""
    from sqlalchemy import select

    kind, _, key = subject.partition(":")
    query = select(Receiver.id).where(Receiver.status == ReceiverStatus.ACTIVE.value)
    if kind == "receiver":
        query = query.where(Receiver.id == key)
    elif kind == "station":
        query = query.where(Receiver.station_id == int(key))
    elif kind == "region":
        region = session.get(Region, int(key))
        if region is None:
            return []
        query = query.where(RegionScope(region.path).receivers())
    else:
        raise ValueError(f"unknown registry subject {subject!r}")
    return list(session.scalars(query.order_by(Receiver.id)))
