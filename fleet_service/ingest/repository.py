"""What ingest needs from the database: which receivers exist, and the ledger's open intervals."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.registry.models import Receiver, ReceiverStatus
from fleet_service.uptime.models import ConnectivityInterval
from fleet_service.uptime.repository import LedgerRepository


class IngestRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def active_receivers(self) -> dict[str, int | None]:
        rows = self.session.execute(
            select(Receiver.id, Receiver.station_id).where(Receiver.status == ReceiverStatus.ACTIVE.value)
        )
        return {rid: station for rid, station in rows}

    def active_receiver(self, receiver_id: str) -> tuple[int | None] | None:
        row = self.session.execute(
            select(Receiver.station_id).where(Receiver.id == receiver_id,
                                              Receiver.status == ReceiverStatus.ACTIVE.value)
        ).first()
        return None if row is None else (row[0],)

    def open_intervals(self) -> Sequence[ConnectivityInterval]:
        return LedgerRepository(self.session).open_intervals()


def receivers_with_open_interval(session: Session, region_path: str | None):  # type: ignore[no-untyped-def]
    """Every active receiver in a subtree (all if None) with its station, region path and the
    ledger's open interval (None if it was never seen)."""
    from sqlalchemy import and_

    from fleet_service.registry.models import Region, Station

    query = (
        select(Receiver.id, Station.id, Station.name, Region.path, ConnectivityInterval)
        .select_from(Receiver)
        .outerjoin(Station, Station.id == Receiver.station_id)
        .outerjoin(Region, Region.id == Station.region_id)
        .outerjoin(ConnectivityInterval, and_(ConnectivityInterval.receiver_id == Receiver.id,
                                              ConnectivityInterval.end_at.is_(None)))
        .where(Receiver.status == ReceiverStatus.ACTIVE.value)
        .order_by(Receiver.id)
    )
    if region_path is not None:
        query = query.where(Region.path.startswith(region_path, autoescape=True))
    return session.execute(query).all()
