"""Creating commands and reading the audit log. Functions take a session and never commit
(the request or the CLI does); delivery to the receivers is delivery.CommandDelivery's job."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from fleet_service.auth.models import Role
from fleet_service.commands import repository
from fleet_service.commands.models import Command, CommandTarget, TargetKind
from fleet_service.commands.schemas import DEFAULT_EXPIRY_S, CommandCreate, CommandOut, Target, TargetOut
from fleet_service.db import utcnow
from fleet_service.errors import Forbidden, Invalid, NotFound
from fleet_service.outbox import service as outbox
from fleet_service.outbox.service import OutboxKind
from fleet_service.protocol.codec import COMMAND_ADAPTER
from fleet_service.protocol.messages import CommandOp, Priority
from fleet_service.registry import service as registry
from fleet_service.scope import RegionScope, ScopeLike

# Who may send which operation. Admins may do everything; an operator may send emergency
# bulletins (and stop them) only when the user is marked for it (users.emergency).
OP_ROLES: dict[CommandOp, frozenset[Role]] = {
    CommandOp.PLAY: frozenset({Role.OPERATOR, Role.TECHNICIAN}),
    CommandOp.STOP: frozenset({Role.OPERATOR, Role.TECHNICIAN}),
    CommandOp.VOLUME: frozenset({Role.OPERATOR, Role.TECHNICIAN}),
    CommandOp.REBOOT: frozenset({Role.TECHNICIAN}),
    CommandOp.CONFIG: frozenset({Role.TECHNICIAN}),
    CommandOp.SCHEDULE: frozenset(),  # sent by the schedules domain on behalf of its editors
}

# What each outcome reason means, for the people reading the audit log.
REASON_TEXT: dict[str, tuple[str, str]] = {
    "malformed": ("Lệnh không hợp lệ", "not a valid command"),
    "unknown_op": ("Thiết bị không biết lệnh này", "the receiver does not know this operation"),
    "volume_range": ("Âm lượng ngoài khoảng 0–100", "volume outside 0-100"),
    "bad_url": ("Địa chỉ luồng không hợp lệ", "invalid stream URL"),
    "bad_schedule": ("Lịch phát không hợp lệ", "invalid schedule"),
    "unknown_setting": ("Thiết bị không có cài đặt này", "unknown setting"),
    "lower_priority": ("Đang phát bản tin ưu tiên cao hơn", "something of higher priority is playing"),
    "expired": ("Lệnh đến khi đã hết hạn", "arrived after its expiry"),
    "stream_unreachable": ("Không kết nối được luồng phát", "could not reach the stream"),
    "stream_error": ("Luồng phát bị lỗi", "the stream failed"),
    "storage": ("Thiết bị không ghi được bộ nhớ", "the receiver could not write its storage"),
    "nothing_playing": ("Không có gì đang phát", "nothing was playing"),
    "interrupted": ("Thiết bị mất điện hoặc khởi động lại khi đang thực hiện lệnh",
                    "the receiver lost power or reset while carrying it out"),
    "not_delivered": ("Thiết bị không kết nối trước khi lệnh hết hạn", "the receiver did not connect before the command expired"),
    "no_answer": ("Thiết bị nhận lệnh nhưng không báo kết quả trước khi hết hạn", "accepted, but no outcome before the command expired"),
    "superseded": ("Đã có lệnh mới thay thế", "replaced by a newer command"),
    "receiver_removed": ("Thiết bị đã bị thu hồi", "the receiver was revoked or retired"),
}


@dataclass(frozen=True, slots=True)
class Issuer:
    user_id: int | None
    username: str
    role: Role
    scope: ScopeLike           # the subtree the issuer may act on; None = whole fleet
    emergency: bool = False    # may send emergency-priority commands


@dataclass(frozen=True, slots=True)
class Created:
    command: Command
    receiver_ids: list[str]
    payload: bytes              # the wire payload, the same for every target


def new_command_id() -> str:
    return secrets.token_urlsafe(9)  # 12 characters of [A-Za-z0-9_-], 72 random bits


def wire_payload(command_id: str, op: CommandOp, priority: Priority, params: dict[str, Any],
                 issued_at: datetime, expires_at: datetime) -> bytes:
    """The command as receivers get it, validated against the protocol's own definition."""
    raw = {"v": 1, "id": command_id, "op": op.value, "pri": priority.value,
           "ts": int(issued_at.timestamp()), "exp": int(expires_at.timestamp()), **params}
    model = COMMAND_ADAPTER.validate_python(raw)
    return COMMAND_ADAPTER.dump_json(model, by_alias=True, exclude_none=True)


def check_allowed(issuer: Issuer, op: CommandOp, priority: Priority) -> None:
    if issuer.role is not Role.ADMIN and issuer.role not in OP_ROLES[op]:
        raise Forbidden(f"Vai trò '{issuer.role}' không được gửi lệnh '{op}'",
                        f"The role '{issuer.role}' may not send '{op}' commands")
    if priority is Priority.EMERGENCY and issuer.role is not Role.ADMIN and not issuer.emergency:
        raise Forbidden("Tài khoản này không được phát hoặc dừng bản tin khẩn cấp",
                        "This account may not send or stop emergency bulletins")


def _params(data: CommandCreate) -> dict[str, Any]:
    if data.op is CommandOp.PLAY:
        return {"url": data.url, **({"dur": data.duration_s} if data.duration_s else {})}
    if data.op is CommandOp.VOLUME:
        return {"vol": data.volume}
    if data.op is CommandOp.CONFIG:
        assert data.settings is not None
        settings = data.settings.model_dump(exclude_none=True)
        if not settings:
            raise Invalid("Chưa có cài đặt nào để đổi", "No setting to change was given")
        return {"set": settings}
    return {}


def resolve_target(session: Session, target: Target, scope: ScopeLike) -> tuple[TargetKind, str, str, list[str]]:
    """(kind, ref, name, active receiver ids). Out of scope reads as absent."""
    if target.receiver is not None:
        receiver = registry.get_receiver(session, target.receiver, scope=scope)
        ids = repository.active_receivers_under(session, receiver_id=receiver.id)
        return TargetKind.RECEIVER, receiver.id, receiver.id, ids
    if target.station is not None:
        station = registry.get_station(session, target.station, scope=scope)
        ids = repository.active_receivers_under(session, station_id=station.id)
        return TargetKind.STATION, str(station.id), station.name, ids
    if target.region is not None:
        region = registry.get_region(session, target.region, scope=scope)
        ids = repository.active_receivers_under(session, under=RegionScope(region.path))
        return TargetKind.REGION, str(region.id), region.name, ids
    if RegionScope.of(scope).restricted:
        raise Forbidden("Chỉ quản trị toàn hệ thống mới gửi lệnh cho cả hệ thống",
                        "Only a whole-fleet account may command the whole fleet")
    return TargetKind.FLEET, "", "toàn hệ thống / whole fleet", repository.active_receivers_under(session)


def _target_ids(kind: TargetKind, ref: str) -> dict[str, Any]:
    """The command's target columns: the id of its kind, none for the whole fleet."""
    if kind is TargetKind.RECEIVER:
        return {"target_receiver_id": ref}
    if kind is TargetKind.STATION:
        return {"target_station_id": int(ref)}
    if kind is TargetKind.REGION:
        return {"target_region_id": int(ref)}
    return {}


def create_command(session: Session, data: CommandCreate, issuer: Issuer, *, now: datetime | None = None) -> Created:
    check_allowed(issuer, data.op, data.priority)
    params = _params(data)
    kind, ref, name, receiver_ids = resolve_target(session, data.target, issuer.scope)
    return _create(session, data.op, data.priority, params, kind, ref, name, receiver_ids, issuer,
                   expires_in_s=data.expires_in_s, note=data.note, now=now)


def create_system_command(session: Session, op: CommandOp, priority: Priority, params: dict[str, Any],
                          kind: TargetKind, ref: str, name: str, receiver_ids: Sequence[str],
                          issuer: Issuer, *, expires_in_s: int | None = None, note: str | None = None,
                          now: datetime | None = None) -> Created:
    """For other domains (schedules) that decide the targets themselves."""
    return _create(session, op, priority, params, kind, ref, name, list(receiver_ids), issuer,
                   expires_in_s=expires_in_s, note=note, now=now)


def _create(session: Session, op: CommandOp, priority: Priority, params: dict[str, Any], kind: TargetKind, ref: str,
            name: str, receiver_ids: list[str], issuer: Issuer, *, expires_in_s: int | None,
            note: str | None, now: datetime | None) -> Created:
    if not receiver_ids:
        raise Invalid(f"'{name}' không có thiết bị nào đang hoạt động", f"'{name}' has no active receiver")
    issued_at = (now or utcnow()).replace(microsecond=0)
    expires_at = issued_at + timedelta(seconds=expires_in_s or DEFAULT_EXPIRY_S[op])
    command_id = new_command_id()
    try:
        payload = wire_payload(command_id, op, priority, params, issued_at, expires_at)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise Invalid(f"Lệnh không hợp lệ: {exc}", f"Invalid command: {exc}") from None
    command = Command(id=command_id, op=op.value, priority=priority.value, params=params, target_kind=kind.value,
                      **_target_ids(kind, ref), target_name=name, issued_by=issuer.user_id,
                      issuer_name=issuer.username, issued_at=issued_at, expires_at=expires_at, note=note)
    repository.add_command(session, command, receiver_ids)
    # Delivered by the leading worker, whichever process recorded it.
    outbox.record(session, OutboxKind.COMMAND_CREATED, command_id)
    return Created(command, receiver_ids, payload)


def payload_of(command: Command) -> bytes:
    return wire_payload(command.id, CommandOp(command.op), Priority(command.priority), command.params,
                        command.issued_at, command.expires_at)


def get_command(session: Session, command_id: str, *, scope: ScopeLike = None) -> Command:
    """A command the caller may read: with ``scope``, one that concerns the subtree (its target
    lies in it or above it, or it went to one of its receivers). Reading one is not being
    allowed to stop or change it: that is create_command's check, on the new command's target."""
    command = repository.get_command(session, command_id, scope)
    if command is None:
        raise NotFound(f"Không có lệnh {command_id}", f"No command {command_id}")
    return command


def command_out(command: Command, progress: dict[str, int]) -> CommandOut:
    return CommandOut(id=command.id, op=command.op, priority=command.priority, params=command.params,
                      target_kind=command.target_kind, target_ref=command.target_ref, target_name=command.target_name,
                      issued_by=command.issuer_name, issued_at=command.issued_at, expires_at=command.expires_at,
                      note=command.note, targets=sum(progress.values()), progress=progress)


def describe(session: Session, commands: Sequence[Command], *, scope: ScopeLike = None) -> list[CommandOut]:
    """With ``scope``, the counts cover only the subtree's receivers: a fleet-wide command shows
    a commune's operator their own receivers, not the fleet."""
    counts = repository.status_counts(session, [c.id for c in commands], scope=scope)
    return [command_out(c, counts[c.id]) for c in commands]


def target_out(target: CommandTarget) -> TargetOut:
    text = REASON_TEXT.get(target.reason or "")
    return TargetOut(receiver_id=target.receiver_id, status=target.status, reason=target.reason,
                     reason_text=f"{text[0]} / {text[1]}" if text else None, deliveries=target.deliveries,
                     first_sent_at=target.first_sent_at, accepted_at=target.accepted_at,
                     finished_at=target.finished_at)
