"""A small registered and provisioned fleet in a database, for end-to-end tests."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate


@dataclass
class SmallFleet:
    region_id: int
    station_ids: list[int]
    credentials: dict[str, str]  # receiver id -> MQTT password

    def station_of(self, receiver_id: str) -> int:
        return self.station_ids[int(receiver_id.rsplit("-", 1)[1]) % len(self.station_ids)]


def provision_fleet(sessions: sessionmaker[Session], receivers: int = 4, stations: int = 2,
                    prefix: str = "rx") -> SmallFleet:
    with session_scope(sessions) as session:
        province = registry.create_region(session, RegionCreate(name="Thái Nguyên", level="tỉnh", code=f"{prefix}-p"))
        commune = registry.create_region(
            session, RegionCreate(name="Hùng Sơn", level="thị trấn", code=f"{prefix}-c", parent_id=province.id))
        station_ids = [
            registry.create_station(session, StationCreate(region_id=commune.id, name=f"Đài {i}")).id
            for i in range(stations)
        ]
        fleet = SmallFleet(commune.id, station_ids, {})
        for i in range(receivers):
            rid = f"{prefix}-{i}"
            registry.register_receiver(session, ReceiverCreate(id=rid, hardware_id=f"{prefix}-hw-{i}",
                                                               station_id=fleet.station_of(rid)))
            fleet.credentials[rid] = registry.provision(session, rid).mqtt_password
    return fleet
