"""Commands and schedules keep their target by id: when a region moves to another parent, the
operator of the new parent sees them and the operator of the old one no longer does, with
nothing else changed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet_service.auth.models import Role
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from tests.fleet_service.auth.world import World, ok, running_api

API = "/api/v1"
URL = "http://127.0.0.1:9/live.mp3"


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    with running_api(db_url) as w:
        yield w


def _seen(world: World, headers: dict[str, str]) -> tuple[set[str], set[str]]:
    """(ids of the commands, names of the schedules) the caller sees."""
    commands = {c["id"] for c in ok(world.client.get(f"{API}/commands", headers=headers))}
    schedules = {s["name"] for s in ok(world.client.get(f"{API}/schedules", headers=headers))}
    return commands, schedules


def test_a_moved_region_takes_its_commands_and_schedules_to_its_new_parent(world: World) -> None:
    with world.session() as s:
        old = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
        new = registry.create_region(s, RegionCreate(name="Phú Bình", level="huyện"))
        commune = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn", parent_id=old.id))
        station = registry.create_station(s, StationCreate(region_id=commune.id, name="Đài Hùng Sơn"))
        registry.register_receiver(s, ReceiverCreate(id="x-1", hardware_id="hw-x-1", station_id=station.id))
        ids = {"old": old.id, "new": new.id, "commune": commune.id, "station": station.id}
    admin = world.user("admin", Role.ADMIN)
    of_old = world.user("op.daitu", Role.OPERATOR, ids["old"])
    of_new = world.user("op.phubinh", Role.OPERATOR, ids["new"])
    of_commune = world.user("op.hungson", Role.OPERATOR, ids["commune"])

    sent = set()
    for target in ({"station": ids["station"]}, {"region": ids["commune"]}, {"receiver": "x-1"}):
        sent.add(ok(world.client.post(f"{API}/commands", json={"target": target, "op": "play", "url": URL},
                                      headers=admin), 202)["id"])
    for name, target in (("Đài", {"station": ids["station"]}), ("Thị trấn", {"region": ids["commune"]})):
        ok(world.client.post(f"{API}/schedules", json={"name": name, **target, "slots": [
            {"start": "05:00" if name == "Đài" else "17:00", "end": "05:30" if name == "Đài" else "17:30",
             "url": URL}]}, headers=admin), 201)
    # Pushing the schedules sent commands of their own, to the same receiver.
    everything, schedules = _seen(world, admin)
    assert sent < everything and schedules == {"Đài", "Thị trấn"}

    assert _seen(world, of_old) == (everything, schedules)
    assert _seen(world, of_new) == (set(), set())

    ok(world.client.post(f"{API}/regions/{ids['commune']}/move", json={"parent_id": ids["new"]}, headers=admin))

    assert _seen(world, of_new) == (everything, schedules)
    assert _seen(world, of_old) == (set(), set())
    assert _seen(world, of_commune) == (everything, schedules)
    for command_id in sent:
        assert world.client.get(f"{API}/commands/{command_id}", headers=of_old).status_code == 404
        detail = ok(world.client.get(f"{API}/commands/{command_id}", headers=of_new))
        assert detail["targets"] == 1
        assert [t["receiver_id"] for t in ok(world.client.get(f"{API}/commands/{command_id}/targets",
                                                              headers=of_new))] == ["x-1"]
