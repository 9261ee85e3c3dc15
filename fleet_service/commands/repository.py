"""Every commands query."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from fleet_service.commands.models import OPEN_STATUSES, Command, CommandTarget, TargetStatus
from fleet_service.registry.models import Receiver, ReceiverStatus
from fleet_service.scope import RegionScope, ScopeLike

# Rows per INSERT when a command fans out to a whole province.
_INSERT_CHUNK = 5000
_TARGETS: Table = CommandTarget.__table__  # type: ignore[assignment]


def active_receivers_under(session: Session, *, receiver_id: str | None = None, station_id: int | None = None,
                           under: ScopeLike = None, scope: ScopeLike = None) -> list[str]:
    """Active receivers of one target (a receiver, a station, the subtree ``under``),
    restricted to ``scope``. A receiver on no station is reached only by its own id or the
    whole fleet, and only by a caller whose scope is the whole fleet."""
    query = select(Receiver.id).where(Receiver.status == ReceiverStatus.ACTIVE.value,
                                      RegionScope.of(under).receivers(), RegionScope.of(scope).receivers())
    if receiver_id is not None:
        query = query.where(Receiver.id == receiver_id)
    if station_id is not None:
        query = query.where(Receiver.station_id == station_id)
    return list(session.scalars(query.order_by(Receiver.id)))


def add_command(session: Session, command: Command, receiver_ids: Sequence[str]) -> None:
    session.add(command)
    session.flush()
    rows = [{"command_id": command.id, "receiver_id": rid, "status": TargetStatus.PENDING.value, "deliveries": 0}
            for rid in receiver_ids]
    # Core, not the ORM's bulk INSERT: the rows need none of its bookkeeping, and for a
    # fleet-wide command it is most of the time before the first receiver is sent anything.
    connection = session.connection()
    for start in range(0, len(rows), _INSERT_CHUNK):
        connection.execute(insert(_TARGETS), rows[start:start + _INSERT_CHUNK])


def get_command(session: Session, command_id: str, scope: ScopeLike = None) -> Command | None:
    """A command that concerns ``scope`` (RegionScope.commands says which do)."""
    return session.scalar(select(Command).where(Command.id == command_id, RegionScope.of(scope).commands()))


def list_commands(session: Session, *, scope: ScopeLike, since: datetime | None, until: datetime | None,
                  receiver_id: str | None = None, limit: int = 100, offset: int = 0) -> Sequence[Command]:
    query = select(Command).where(RegionScope.of(scope).commands())
    if since is not None:
        query = query.where(Command.issued_at >= since)
    if until is not None:
        query = query.where(Command.issued_at <= until)
    if receiver_id is not None:
        query = query.where(Command.id.in_(select(CommandTarget.command_id).where(CommandTarget.receiver_id == receiver_id)))
    return session.scalars(query.order_by(Command.issued_at.desc(), Command.id).limit(limit).offset(offset)).all()


def status_counts(session: Session, command_ids: Iterable[str], *, scope: ScopeLike = None) -> dict[str, dict[str, int]]:
    """Targets by status, of each command; with ``scope``, only the subtree's receivers."""
    ids = list(command_ids)
    counts: dict[str, dict[str, int]] = {cid: {} for cid in ids}
    if not ids:
        return counts
    query = (select(CommandTarget.command_id, CommandTarget.status, func.count())
             .where(CommandTarget.command_id.in_(ids), RegionScope.of(scope).command_targets())
             .group_by(CommandTarget.command_id, CommandTarget.status))
    rows = session.execute(query)
    for cid, status, n in rows:
        counts[cid][status] = n
    return counts


def targets_of(session: Session, command_id: str, *, status: str | None = None,
               scope: ScopeLike = None) -> Sequence[CommandTarget]:
    """A command's targets; with ``scope``, only the subtree's receivers."""
    query = select(CommandTarget).where(CommandTarget.command_id == command_id, RegionScope.of(scope).command_targets())
    if status is not None:
        query = query.where(CommandTarget.status == status)
    return session.scalars(query.order_by(CommandTarget.receiver_id)).all()


def open_targets(session: Session) -> list[tuple[CommandTarget, Command]]:
    """Every target still waiting for a final outcome, with its command (loaded at start)."""
    rows = session.execute(
        select(CommandTarget, Command).join(Command, Command.id == CommandTarget.command_id)
        .where(CommandTarget.status.in_(OPEN_STATUSES)))
    return [(t, c) for t, c in rows]


def open_targets_of_command(session: Session, command_id: str) -> tuple[Command, list[str]] | None:
    """A command and its receivers still waiting for a final outcome, or None if there are none."""
    command = session.get(Command, command_id)
    if command is None:
        return None
    receiver_ids = list(session.scalars(select(CommandTarget.receiver_id).where(
        CommandTarget.command_id == command_id, CommandTarget.status.in_(OPEN_STATUSES))))
    return (command, receiver_ids) if receiver_ids else None


def open_targets_of_receivers(session: Session, receiver_ids: Sequence[str], op: str) -> Sequence[CommandTarget]:
    return session.scalars(
        select(CommandTarget).join(Command, Command.id == CommandTarget.command_id)
        .where(CommandTarget.receiver_id.in_(receiver_ids), CommandTarget.status.in_(OPEN_STATUSES),
               Command.op == op)).all()


def apply_updates(session: Session, updates: Sequence[dict[str, Any]]) -> None:
    """UPDATE by primary key (command_id, receiver_id), one executemany for the batch; every
    row sets the same columns."""
    if not updates:
        return
    columns = [k for k in updates[0] if k not in ("command_id", "receiver_id")]
    statement = (update(_TARGETS)
                 .where(_TARGETS.c.command_id == bindparam("key_command"),
                        _TARGETS.c.receiver_id == bindparam("key_receiver"))
                 .values({k: bindparam(k) for k in columns}))
    session.connection().execute(statement, [{**row, "key_command": row["command_id"],
                                              "key_receiver": row["receiver_id"]} for row in updates])
