"""Every schedules query."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, selectinload

from fleet_service.registry.models import Receiver, ReceiverStatus, Region, Station
from fleet_service.schedules.models import ReceiverSchedule, Schedule
from fleet_service.scope import RegionScope, ScopeLike


def path_of_target(session: Session, schedule: Schedule) -> str | None:
    if schedule.target_kind == "station":
        query = select(Region.path).join(Station, Station.region_id == Region.id).where(Station.id == schedule.target_id)
    else:
        query = select(Region.path).where(Region.id == schedule.target_id)
    return session.scalar(query)


def get_schedule(session: Session, schedule_id: int, scope: ScopeLike = None) -> Schedule | None:
    query = (select(Schedule).where(Schedule.id == schedule_id, RegionScope.of(scope).schedules())
             .options(selectinload(Schedule.slots)))
    return session.scalar(query)


def list_schedules(session: Session, scope: ScopeLike = None) -> Sequence[Schedule]:
    query = (select(Schedule).where(RegionScope.of(scope).schedules())
             .options(selectinload(Schedule.slots)).order_by(Schedule.id))
    return session.scalars(query).all()


def receivers_reached(session: Session, *, station_id: int | None = None, under: ScopeLike = None,
                      receiver_ids: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
    """(receiver id, station id, region path) of the active receivers a schedule target reaches
    (or of those of ``receiver_ids`` that serve a station)."""
    query = (select(Receiver.id, Station.id, Region.path).join(Station, Station.id == Receiver.station_id)
             .join(Region, Region.id == Station.region_id)
             .where(Receiver.status == ReceiverStatus.ACTIVE.value, RegionScope.of(under).regions()))
    if station_id is not None:
        query = query.where(Station.id == station_id)
    if receiver_ids is not None:
        query = query.where(Receiver.id.in_(list(receiver_ids)))
    return [(rid, sid, path) for rid, sid, path in session.execute(query.order_by(Receiver.id))]


def station_names(session: Session, station_ids: Iterable[int]) -> dict[int, str]:
    rows = session.execute(select(Station.id, Station.name).where(Station.id.in_(list(station_ids))))
    return {sid: name for sid, name in rows}


def schedules_of_targets(session: Session, station_ids: Iterable[int], region_ids: Iterable[int]) -> Sequence[Schedule]:
    """Schedules of any of these stations or regions."""
    return session.scalars(select(Schedule).where(or_(
        and_(Schedule.target_kind == "station", Schedule.target_id.in_(list(station_ids))),
        and_(Schedule.target_kind == "region", Schedule.target_id.in_(list(region_ids))),
    )).options(selectinload(Schedule.slots))).all()


def sent_schedules(session: Session, receiver_ids: Sequence[str]) -> dict[str, ReceiverSchedule]:
    rows = session.scalars(select(ReceiverSchedule).where(ReceiverSchedule.receiver_id.in_(list(receiver_ids))))
    return {row.receiver_id: row for row in rows}


def highest_version(session: Session) -> int:
    return session.scalar(select(func.max(ReceiverSchedule.version))) or 0
