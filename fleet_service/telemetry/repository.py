"""What the telemetry writer needs from the registry: each receiver's station and region."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.registry.models import Receiver, Region, Station


class TagRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def regions(self) -> dict[int, tuple[str | None, str]]:
        """Region id -> (code, materialised path of ids)."""
        return {rid: (code, path) for rid, code, path in self.session.execute(select(Region.id, Region.code, Region.path))}

    def receiver_stations(self) -> list[tuple[str, int | None, int | None]]:
        """(receiver id, station id, station's region id) for every receiver, whatever its status:
        a revoked receiver's late messages still belong to its station."""
        rows = self.session.execute(
            select(Receiver.id, Station.id, Station.region_id).select_from(Receiver)
            .outerjoin(Station, Station.id == Receiver.station_id))
        return [(rid, sid, region_id) for rid, sid, region_id in rows]
