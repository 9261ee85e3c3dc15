"""Schedules: validate, store, and push each affected receiver the schedule it should hold.

A receiver's schedule is every slot of the schedules of its station and of the regions above
it. After any change, each affected receiver's schedule is rebuilt; where it differs from what
the receiver was last sent, a new version goes out as a ``schedule`` command (one command per
distinct resulting schedule). Slots that would overlap on any receiver are refused with the
receiver and the slots named, and nothing is stored."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.orm import Session

from fleet_service.commands import service as commands
from fleet_service.commands.models import TargetKind
from fleet_service.db import utcnow
from fleet_service.errors import Forbidden, Invalid, NotFound
from fleet_service.auth.models import Role
from fleet_service.protocol.codec import COMMAND_ADAPTER
from fleet_service.protocol.messages import CommandOp, Priority, ScheduleCommand, ScheduleSlot
from fleet_service.registry import service as registry
from fleet_service.schedules import repository
from fleet_service.schedules.models import ReceiverSchedule, Schedule, ScheduleSlotRow
from fleet_service.schedules.schemas import ScheduleCreate, ScheduleOut, SlotIn, SlotOut, days_of
from fleet_service.scope import ScopeLike
from fleet_service.timefmt import LOCAL_ZONE

log = logging.getLogger(__name__)

# Minutes east of UTC of the stations' local time (Asia/Ho_Chi_Minh has no daylight saving).
TZ_OFFSET_MIN = int(datetime.now(LOCAL_ZONE).utcoffset().total_seconds() // 60)  # type: ignore[union-attr]
EDITOR_ROLES = frozenset({Role.ADMIN, Role.OPERATOR})


def _check_editor(issuer: commands.Issuer) -> None:
    if issuer.role not in EDITOR_ROLES:
        raise Forbidden(f"Vai trò '{issuer.role}' không được sửa lịch phát",
                        f"The role '{issuer.role}' may not edit broadcast schedules")


def _slot_rows(slots: Sequence[SlotIn], issuer: commands.Issuer) -> list[ScheduleSlotRow]:
    if any(s.priority is Priority.EMERGENCY for s in slots) and issuer.role is not Role.ADMIN and not issuer.emergency:
        raise Forbidden("Tài khoản này không được lên lịch bản tin khẩn cấp",
                        "This account may not schedule emergency bulletins")
    return [ScheduleSlotRow(start=s.start, end=s.end, days=s.day_mask, url=s.url, priority=s.priority.value,
                            valid_from=s.valid_from, valid_to=s.valid_to, volume=s.volume, label=s.label)
            for s in slots]


def create_schedule(session: Session, data: ScheduleCreate, issuer: commands.Issuer) -> tuple[Schedule, list[commands.Created]]:
    _check_editor(issuer)
    if data.station is not None:
        station = registry.get_station(session, data.station, scope=issuer.scope)
        kind, target_id = "station", station.id
    else:
        assert data.region is not None
        region = registry.get_region(session, data.region, scope=issuer.scope)
        kind, target_id = "region", region.id
    now = utcnow()
    schedule = Schedule(name=data.name, target_kind=kind, target_id=target_id,
                        created_by=issuer.username, created_at=now, updated_at=now,
                        slots=_slot_rows(data.slots, issuer))
    session.add(schedule)
    session.flush()
    return schedule, push(session, schedule, issuer)


def replace_slots(session: Session, schedule_id: int, slots: Sequence[SlotIn], issuer: commands.Issuer
                  ) -> tuple[Schedule, list[commands.Created]]:
    _check_editor(issuer)
    schedule = get_schedule(session, schedule_id, scope=issuer.scope)
    schedule.slots = _slot_rows(slots, issuer)
    schedule.updated_at = utcnow()
    session.flush()
    return schedule, push(session, schedule, issuer)


def delete_schedule(session: Session, schedule_id: int, issuer: commands.Issuer) -> list[commands.Created]:
    _check_editor(issuer)
    schedule = get_schedule(session, schedule_id, scope=issuer.scope)
    session.delete(schedule)
    session.flush()
    return push(session, schedule, issuer)


def get_schedule(session: Session, schedule_id: int, *, scope: ScopeLike = None) -> Schedule:
    schedule = repository.get_schedule(session, schedule_id, scope)
    if schedule is None:
        raise NotFound(f"Không có lịch phát {schedule_id}", f"No schedule {schedule_id}")
    return schedule


def wire_slot(row: ScheduleSlotRow) -> ScheduleSlot:
    return ScheduleSlot(slot_id=f"s{row.id}", start=row.start, end=row.end, days=row.days, url=row.url,
                        priority=Priority(row.priority), valid_from=row.valid_from, valid_to=row.valid_to,
                        volume=row.volume)


def _region_ids(path: str) -> set[int]:
    """The ids of a region and of every region above it: its path is made of them ("/1/7/42/")."""
    return {int(part) for part in path.strip("/").split("/") if part}


def receiver_slots(session: Session, reached: Sequence[tuple[str, int, str]]) -> dict[str, list[ScheduleSlot]]:
    """Each receiver's whole schedule, from its station's and its regions' schedules, found by
    the targets' ids from where the receiver is now."""
    schedules = repository.schedules_of_targets(session, {sid for _, sid, _ in reached},
                                                {i for _, _, path in reached for i in _region_ids(path)})
    result: dict[str, list[ScheduleSlot]] = {}
    for rid, station_id, path in reached:
        regions = _region_ids(path)
        slots: list[ScheduleSlot] = []
        for schedule in schedules:
            applies = (schedule.target_id == station_id if schedule.target_kind == "station"
                       else schedule.target_id in regions)
            if applies:
                slots.extend(wire_slot(row) for row in schedule.slots)
        result[rid] = sorted(slots, key=lambda s: (s.seconds(), s.slot_id))
    return result


def _validated(rid: str, slots: list[ScheduleSlot]) -> ScheduleCommand:
    try:
        return ScheduleCommand(command_id="check", issued_at=0, expires_at=0, schedule_version=0, tz_offset_min=TZ_OFFSET_MIN,
                               slots=tuple(slots))
    except ValidationError as exc:
        detail = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
        raise Invalid(f"Lịch phát không hợp lệ cho thiết bị {rid}: {detail}",
                      f"The schedule would be invalid on receiver {rid}: {detail}") from None


def push(session: Session, schedule: Schedule, issuer: commands.Issuer) -> list[commands.Created]:
    """Rebuild the schedules of every receiver ``schedule`` reaches; send those that changed."""
    path = repository.path_of_target(session, schedule)
    if path is None:  # its station or region is gone: no receiver to send anything
        return []
    if schedule.target_kind == "station":
        reached = repository.receivers_reached(session, station_id=schedule.target_id)
    else:
        reached = repository.receivers_reached(session, under=path)
    if not reached:
        return []
    wanted = receiver_slots(session, reached)
    for rid, slots in wanted.items():
        _validated(rid, slots)
    kind = TargetKind.STATION if schedule.target_kind == "station" else TargetKind.REGION
    target = (kind, str(schedule.target_id), schedule.name)
    return _send_changed(session, wanted, {rid: target for rid, _, _ in reached}, issuer,
                         f"lịch phát / schedule #{schedule.id}")


def bring_up_to_date(session: Session, receiver_ids: Sequence[str]) -> list[commands.Created]:
    """Send each of ``receiver_ids`` the schedule it should hold where that differs from what it
    was last sent: for receivers registered, moved to another station, or under a region that
    moved since the schedules were pushed. A receiver that was never sent a schedule and should
    hold none is left alone; one whose combined slots would be invalid (a station that had no
    receiver when its schedules were checked) keeps what it holds, and the log says why."""
    reached = repository.receivers_reached(session, receiver_ids=receiver_ids)
    if not reached:
        return []
    wanted = receiver_slots(session, reached)
    sent = repository.sent_schedules(session, [rid for rid, _, _ in reached])
    for rid, slots in list(wanted.items()):
        if not slots and rid not in sent:
            del wanted[rid]
            continue
        try:
            _validated(rid, slots)
        except Invalid as exc:
            log.error("schedule of %s not brought up to date: %s", rid, exc.message_en)
            del wanted[rid]
    stations = repository.station_names(session, {sid for _, sid, _ in reached})
    targets = {rid: (TargetKind.STATION, str(sid), stations[sid]) for rid, sid, _path in reached}
    return _send_changed(session, wanted, targets, SYSTEM, "lịch phát cập nhật theo sổ thiết bị / schedule brought up "
                         "to date with the registry", sent=sent)


# Commands that other domains send on the service's own behalf carry this issuer.
SYSTEM = commands.Issuer(None, "hệ thống / system", Role.ADMIN, None)


def _send_changed(session: Session, wanted: dict[str, list[ScheduleSlot]],
                  targets: dict[str, tuple[TargetKind, str, str]], issuer: commands.Issuer, note: str, *,
                  sent: dict[str, ReceiverSchedule] | None = None) -> list[commands.Created]:
    """One ``schedule`` command per distinct resulting schedule and command target, for the
    receivers whose schedule differs from the one they were last sent; records what was sent."""
    if sent is None:
        sent = repository.sent_schedules(session, list(wanted))
    groups: dict[tuple[str, tuple[TargetKind, str, str]], list[str]] = defaultdict(list)
    wire: dict[str, list[dict[str, object]]] = {}
    for rid, slots in wanted.items():
        as_wire = [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in slots]
        digest = hashlib.sha256(repr(as_wire).encode()).hexdigest()
        if rid in sent and sent[rid].digest == digest:
            continue
        groups[(digest, targets[rid])].append(rid)
        wire[digest] = as_wire
    created: list[commands.Created] = []
    version = max(repository.highest_version(session) + 1, int(time.time()))
    for (digest, (kind, ref, name)), receiver_ids in groups.items():
        params = {"ver": version, "tz": TZ_OFFSET_MIN, "slots": wire[digest]}
        made = commands.create_system_command(
            session, CommandOp.SCHEDULE, Priority.NORMAL, params, kind, ref, name, receiver_ids, issuer,
            note=f"{note} v{version}")
        created.append(made)
        for rid in receiver_ids:
            row = sent.get(rid)
            if row is None:
                session.add(ReceiverSchedule(receiver_id=rid, version=version, digest=digest,
                                             command_id=made.command.id, sent_at=made.command.issued_at))
            else:
                row.version, row.digest, row.command_id, row.sent_at = version, digest, made.command.id, made.command.issued_at
        version += 1
    session.flush()
    return created


def schedule_out(schedule: Schedule, created: Sequence[commands.Created] = ()) -> ScheduleOut:
    return ScheduleOut(
        id=schedule.id, name=schedule.name, target_kind=schedule.target_kind, target_id=schedule.target_id,
        created_by=schedule.created_by, created_at=schedule.created_at, updated_at=schedule.updated_at,
        slots=[SlotOut(id=r.id, start=r.start, end=r.end, days=days_of(r.days), url=r.url, priority=r.priority,
                       valid_from=r.valid_from, valid_to=r.valid_to, volume=r.volume, label=r.label)
               for r in schedule.slots],
        commands=[c.command.id for c in created])


def expected_of(session: Session, receiver_id: str) -> ReceiverSchedule | None:
    return repository.sent_schedules(session, [receiver_id]).get(receiver_id)


def slots_of_command(session: Session, command_id: str) -> list[dict[str, object]]:
    command = commands.get_command(session, command_id)
    model = COMMAND_ADAPTER.validate_python(
        {"v": 1, "id": command.id, "op": command.op, "ts": 0, "exp": 0, **command.params})
    assert isinstance(model, ScheduleCommand)
    return [s.model_dump(mode="json", by_alias=True, exclude_none=True) for s in model.slots]
