"""Every registry query. ``scope`` is the caller's region scope (fleet_service.scope: a
RegionScope, a region path "/1/7/", or None for the whole fleet): rows outside it do not exist
for the caller. ``under`` narrows a list to one subtree in the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, exists, func, literal, select, update
from sqlalchemy.orm import Session

from fleet_service.registry.names import same_name, vietnamese_key
from fleet_service.registry.models import (
    Receiver,
    ReceiverCredential,
    ReceiverStatus,
    Region,
    Station,
    StationAssignment,
)
from fleet_service.scope import RegionScope, ScopeLike

# --- regions -----------------------------------------------------------------------------

def get_region(session: Session, region_id: int, scope: ScopeLike = None) -> Region | None:
    return session.scalar(select(Region).where(Region.id == region_id, RegionScope.of(scope).regions()))


def get_region_by_code(session: Session, code: str) -> Region | None:
    return session.scalar(select(Region).where(Region.code == code))


def list_regions(session: Session, *, under: ScopeLike = None, scope: ScopeLike = None) -> Sequence[Region]:
    """Depth first, siblings in Vietnamese order (then by id). Sorted here: no database
    collation orders Vietnamese as its dictionaries do, and PostgreSQL's usual ones ignore the
    '/' of the paths and would interleave subtrees."""
    regions = session.scalars(select(Region).where(RegionScope.of(scope).regions(),
                                                   RegionScope.of(under).regions())).all()
    by_name = sorted(regions, key=lambda r: (vietnamese_key(r.name), r.id))
    # Each region after its parent, siblings in the order above: sort by the chain of ranks.
    rank = {r.id: i for i, r in enumerate(by_name)}
    return sorted(regions, key=lambda r: [rank.get(int(part), -1) for part in r.path.strip("/").split("/")])


def child_regions(session: Session, parent_id: int | None) -> Sequence[Region]:
    """The regions directly under ``parent_id`` (None: the top-level ones)."""
    parent = Region.parent_id.is_(None) if parent_id is None else Region.parent_id == parent_id
    return session.scalars(select(Region).where(parent)).all()


def region_has_children(session: Session, region_id: int) -> bool:
    return bool(session.scalar(select(exists().where(Region.parent_id == region_id))))


def region_has_stations(session: Session, region_id: int) -> bool:
    return bool(session.scalar(select(exists().where(Station.region_id == region_id))))


def add_region(session: Session, region: Region, parent: Region | None) -> Region:
    """Insert, then set the path, which needs the new id."""
    region.path = ""
    session.add(region)
    session.flush()
    region.path = f"{parent.path if parent else '/'}{region.id}/"
    session.flush()
    return region


def rewrite_subtree_paths(session: Session, old_prefix: str, new_prefix: str) -> None:
    """One UPDATE for a whole subtree: every path starting with ``old_prefix`` gets
    ``new_prefix`` instead."""
    session.execute(
        update(Region)
        .where(RegionScope(old_prefix).regions())
        .values(path=literal(new_prefix) + func.substr(Region.path, len(old_prefix) + 1))
        .execution_options(synchronize_session="fetch")
    )


# --- stations ----------------------------------------------------------------------------

def _stations(scope: ScopeLike, under: ScopeLike = None) -> Select[Station]:
    return select(Station).where(RegionScope.of(scope).stations(), RegionScope.of(under).stations())


def get_station(session: Session, station_id: int, scope: ScopeLike = None) -> Station | None:
    return session.scalar(_stations(scope).where(Station.id == station_id))


def list_stations(session: Session, *, under: ScopeLike = None, scope: ScopeLike = None) -> Sequence[Station]:
    """In Vietnamese order of their names (then by id)."""
    stations = session.scalars(_stations(scope, under)).all()
    return sorted(stations, key=lambda s: (vietnamese_key(s.name), s.id))


def find_station_by_name(session: Session, region_id: int, name: str) -> Station | None:
    """The region's station of that name in NFC, case aside (stations of one region are few)."""
    stations = session.scalars(select(Station).where(Station.region_id == region_id).order_by(Station.id))
    return next((s for s in stations if same_name(s.name, name)), None)


def station_has_receivers_or_history(session: Session, station_id: int) -> bool:
    return bool(session.scalar(select(
        exists().where(Receiver.station_id == station_id)
        | exists().where(StationAssignment.station_id == station_id)
    )))


def station_history(session: Session, station_id: int) -> Sequence[StationAssignment]:
    return session.scalars(
        select(StationAssignment)
        .where(StationAssignment.station_id == station_id)
        .order_by(StationAssignment.start_at, StationAssignment.id)
    ).all()


def open_assignment(session: Session, receiver_id: str) -> StationAssignment | None:
    return session.scalar(
        select(StationAssignment).where(StationAssignment.receiver_id == receiver_id, StationAssignment.end_at.is_(None))
    )


# --- receivers ---------------------------------------------------------------------------

def _receivers(scope: ScopeLike, under: ScopeLike = None) -> Select[Receiver]:
    # A receiver on no station belongs to no region: only the whole-fleet scope sees it.
    return select(Receiver).where(RegionScope.of(scope).receivers(), RegionScope.of(under).receivers())


def get_receiver(session: Session, receiver_id: str, scope: ScopeLike = None) -> Receiver | None:
    return session.scalar(_receivers(scope).where(Receiver.id == receiver_id))


def get_receiver_by_hardware_id(session: Session, hardware_id: str) -> Receiver | None:
    return session.scalar(select(Receiver).where(Receiver.hardware_id == hardware_id))


def list_receivers(
    session: Session,
    *,
    station_id: int | None = None,
    under: ScopeLike = None,
    status: ReceiverStatus | None = None,
    scope: ScopeLike = None,
) -> Sequence[Receiver]:
    query = _receivers(scope, under)
    if station_id is not None:
        query = query.where(Receiver.station_id == station_id)
    if status is not None:
        query = query.where(Receiver.status == status.value)
    return session.scalars(query.order_by(Receiver.id)).all()


def revoke_credentials(session: Session, receiver_id: str, at: datetime) -> None:
    session.execute(
        update(ReceiverCredential)
        .where(ReceiverCredential.receiver_id == receiver_id, ReceiverCredential.revoked_at.is_(None))
        .values(revoked_at=at)
        .execution_options(synchronize_session=False)
    )


def live_credential_hashes(session: Session, receiver_id: str) -> Sequence[str]:
    """Hashes of the unrevoked passwords of an active receiver: one query on the indexed
    receiver id, run at every MQTT login."""
    return session.scalars(
        select(ReceiverCredential.secret_hash)
        .join(Receiver, Receiver.id == ReceiverCredential.receiver_id)
        .where(
            ReceiverCredential.receiver_id == receiver_id,
            ReceiverCredential.revoked_at.is_(None),
            Receiver.status == ReceiverStatus.ACTIVE.value,
        )
    ).all()
