"""A region that moves under another parent keeps its schedules: its receivers are not sent an
empty schedule, and its operator still sees and edits them."""

from __future__ import annotations

from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.schedules import repository, service
from tests.fleet_service.commands.conftest import Fleet

URL = "http://127.0.0.1:9/live.mp3"


async def test_receivers_keep_their_schedule_when_their_region_moves(fleet: Fleet):
    for body in ({"name": "Đài xã", "station": fleet.ids["sx"], "slots": [{"start": "05:30", "end": "06:00", "url": URL}]},
                 {"name": "Thị trấn", "region": fleet.ids["x"], "slots": [{"start": "17:00", "end": "17:30", "url": URL}]}):
        response = await fleet.api.post("/api/v1/schedules", json=body, headers=fleet.admin)
        assert response.status_code == 201, response.text
    before = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    assert [s["s"] for s in before["slots"]] == ["05:30", "17:00"]

    with session_scope(fleet.runtime.sessions) as s:
        other = registry.create_region(s, RegionCreate(name="Phú Bình", level="huyện"))
        registry.move_region(s, fleet.ids["x"], other.id)
    with session_scope(fleet.runtime.sessions) as s:
        # What the birth-time check would send after the move: nothing, the schedule is the same.
        reached = repository.receivers_reached(s, receiver_ids=["x-1", "x-2"])
        wanted = service.receiver_slots(s, reached)
        assert {rid: [slot.start for slot in slots] for rid, slots in wanted.items()} == {
            "x-1": ["05:30", "17:00"], "x-2": ["05:30", "17:00"]}
        assert service.bring_up_to_date(s, ["x-1", "x-2"]) == []
    after = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    assert after["expected_version"] == before["expected_version"]
    assert [s["s"] for s in after["slots"]] == ["05:30", "17:00"]

    # The commune's operator still sees its schedules where the commune now is.
    listed = (await fleet.api.get("/api/v1/schedules", headers=fleet.operator_x)).json()
    assert sorted(s["name"] for s in listed) == ["Thị trấn", "Đài xã"]
