"""Schedules over the API: validation, pushing each receiver its whole schedule as a versioned
command, supersession, scoping."""

from __future__ import annotations

from fleet_service.db import session_scope
from fleet_service.protocol import ScheduleCommand, decode_command
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, ReceiverUpdate
from fleet_service.schedules import sync
from tests.fleet_service.commands.conftest import Fleet, ScriptedReceiver
from tests.support.service import outbox_drained
from tests.support.waiting import wait_until

URL = "http://127.0.0.1:9/live.mp3"
MORNING = {"start": "05:30", "end": "06:00", "url": URL}
EVENING = {"start": "17:00", "end": "17:30", "url": URL, "days": ["mon", "wed", "fri"], "priority": "priority"}


async def create(fleet: Fleet, headers: dict[str, str], **body):
    return await fleet.api.post("/api/v1/schedules", json=body, headers=headers)


async def test_a_station_schedule_reaches_its_receivers_as_one_versioned_command(fleet, receiver):
    x1 = receiver("x-1")
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        response = await create(fleet, fleet.operator_x, name="Bản tin sáng chiều", station=fleet.ids["sx"],
                                slots=[MORNING, EVENING])
        assert response.status_code == 201, response.text
        body = response.json()
        assert len(body["commands"]) == 1
        await wait_until(lambda: len(x1.received) == 1, timeout=10)
    command = decode_command(x1.received[0])
    assert isinstance(command, ScheduleCommand)
    assert command.tz_offset_min == 420
    assert [(s.start, s.end, s.days, s.priority.value) for s in command.slots] == [
        ("05:30", "06:00", 127, "normal"), ("17:00", "17:30", 0b10101, "priority")]
    expected = (await fleet.api.get("/api/v1/receivers/x-2/schedule", headers=fleet.admin)).json()
    assert expected["expected_version"] == command.schedule_version and expected["held_version"] is None
    assert expected["in_step"] is False and len(expected["slots"]) == 2


async def test_region_and_station_schedules_combine_and_a_change_sends_a_new_version(fleet):
    district = await create(fleet, fleet.admin, name="Tiếp sóng huyện", region=fleet.ids["district"],
                            slots=[{"start": "11:00", "end": "11:30", "url": URL}])
    assert district.status_code == 201, district.text
    v1 = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    station = await create(fleet, fleet.admin, name="Đài xã", station=fleet.ids["sx"], slots=[MORNING])
    assert station.status_code == 201
    x1 = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    y1 = (await fleet.api.get("/api/v1/receivers/y-1/schedule", headers=fleet.admin)).json()
    assert [s["s"] for s in x1["slots"]] == ["05:30", "11:00"]
    assert [s["s"] for s in y1["slots"]] == ["11:00"]
    assert x1["expected_version"] > v1["expected_version"]
    assert y1["expected_version"] == v1["expected_version"]  # unchanged for the other commune
    # The first version, never delivered to x-1 (offline), is superseded by the second.
    await wait_until(lambda: outbox_drained(fleet.runtime), timeout=10, what="both handed to delivery")
    await fleet.runtime.commands.flush()
    first = (await fleet.api.get(f"/api/v1/commands/{v1['command_id']}/targets", headers=fleet.admin)).json()
    assert {t["receiver_id"]: t["status"] for t in first}["x-1"] == "superseded"


async def test_overlapping_or_invalid_slots_are_refused_with_a_clear_error(fleet):
    ok = await create(fleet, fleet.admin, name="Huyện", region=fleet.ids["district"], slots=[MORNING])
    assert ok.status_code == 201
    overlap = await create(fleet, fleet.admin, name="Xã", station=fleet.ids["sx"],
                           slots=[{"start": "05:45", "end": "06:15", "url": URL}])
    assert overlap.status_code == 422
    error = overlap.json()["error"]
    assert "x-1" in error["message"]
    assert "overlap" in error["message_en"] and "x-1" in error["message_en"]
    for slot in ({"start": "06:00", "end": "05:30", "url": URL}, {"start": "25:00", "end": "26:00", "url": URL},
                 {"start": "07:00", "end": "07:30", "url": "file:///etc/passwd"},
                 {"start": "07:00", "end": "07:30", "url": URL, "days": []}):
        response = await create(fleet, fleet.admin, name="Sai", station=fleet.ids["sx"], slots=[slot])
        assert response.status_code == 422, (slot, response.text)
    listed = (await fleet.api.get("/api/v1/schedules", headers=fleet.admin)).json()
    assert [s["name"] for s in listed] == ["Huyện"]  # nothing stored of the refused ones


async def test_operators_schedule_only_their_commune_and_not_emergencies(fleet):
    other = await create(fleet, fleet.operator_x, name="Quân Chu", station=fleet.ids["sy"], slots=[MORNING])
    assert other.status_code == 404
    emergency = await create(fleet, fleet.operator_x, name="Khẩn", station=fleet.ids["sx"],
                             slots=[{**MORNING, "priority": "emergency"}])
    assert emergency.status_code == 403
    mine = await create(fleet, fleet.operator_x, name="Hùng Sơn", station=fleet.ids["sx"], slots=[MORNING])
    assert mine.status_code == 201
    theirs = await create(fleet, fleet.admin, name="Quân Chu", station=fleet.ids["sy"], slots=[MORNING])
    seen = [s["name"] for s in (await fleet.api.get("/api/v1/schedules", headers=fleet.operator_x)).json()]
    assert seen == ["Hùng Sơn"]
    gone = await fleet.api.delete(f"/api/v1/schedules/{theirs.json()['id']}", headers=fleet.operator_x)
    assert gone.status_code == 404


async def test_replacing_and_deleting_slots_push_new_versions(fleet):
    made = (await create(fleet, fleet.admin, name="Xã", station=fleet.ids["sx"], slots=[MORNING])).json()
    before = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    replaced = await fleet.api.put(f"/api/v1/schedules/{made['id']}/slots", json={"slots": [EVENING]},
                                   headers=fleet.admin)
    assert replaced.status_code == 200 and len(replaced.json()["commands"]) == 1
    after = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    assert after["expected_version"] > before["expected_version"]
    assert [s["s"] for s in after["slots"]] == ["17:00"]
    assert (await fleet.api.delete(f"/api/v1/schedules/{made['id']}", headers=fleet.admin)).status_code == 204
    empty = (await fleet.api.get("/api/v1/receivers/x-1/schedule", headers=fleet.admin)).json()
    assert empty["slots"] == [] and empty["expected_version"] > after["expected_version"]


async def test_a_receiver_registered_or_moved_later_gets_its_schedule_at_its_next_birth(fleet, monkeypatch):
    monkeypatch.setattr(sync, "SYNC_INTERVAL_S", 0.2)
    created = await create(fleet, fleet.admin, name="Đài xã", station=fleet.ids["sx"], slots=[MORNING])
    assert created.status_code == 201, created.text
    with session_scope(fleet.runtime.sessions) as s:
        registry.register_receiver(s, ReceiverCreate(id="x-3", hardware_id="hw-x-3", station_id=fleet.ids["sx"]))
        password = registry.provision(s, "x-3").mqtt_password
    schedules = fleet.runtime.schedules
    x3 = ScriptedReceiver("x-3", password, fleet.runtime.settings.mqtt_port)

    async with x3.online():  # its first birth: the station's schedule
        await wait_until(lambda: len(x3.received) == 1, timeout=10)
    first = decode_command(x3.received[0])
    assert isinstance(first, ScheduleCommand) and [s.start for s in first.slots] == ["05:30"]
    log = (await fleet.api.get(f"/api/v1/commands/{first.command_id}", headers=fleet.admin)).json()
    assert (log["issued_by"], log["target_kind"], log["target_ref"]) == ("hệ thống / system", "station",
                                                                          str(fleet.ids["sx"]))

    checked = schedules.checked
    async with x3.online():  # nothing changed: nothing sent
        await wait_until(lambda: schedules.checked > checked, timeout=10)
        await fleet.runtime.commands.flush()
    assert len(x3.received) == 1

    with session_scope(fleet.runtime.sessions) as s:  # moved to a station without schedules
        registry.update_receiver(s, "x-3", ReceiverUpdate(station_id=fleet.ids["sy"]))
    async with x3.online():
        await wait_until(lambda: len(x3.received) == 2, timeout=10)
    emptied = decode_command(x3.received[1])
    assert isinstance(emptied, ScheduleCommand) and emptied.slots == ()
    assert emptied.schedule_version > first.schedule_version
    expected = (await fleet.api.get("/api/v1/receivers/x-3/schedule", headers=fleet.admin)).json()
    assert expected["expected_version"] == emptied.schedule_version and expected["slots"] == []


async def test_a_slot_with_dates_reaches_the_receiver_with_them(fleet, receiver):
    x1 = receiver("x-1")
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        response = await create(fleet, fleet.admin, name="Tết", station=fleet.ids["sx"],
                                slots=[{**MORNING, "valid_from": "2027-02-05", "valid_to": "2027-02-09"}])
        assert response.status_code == 201, response.text
        await wait_until(lambda: len(x1.received) == 1, timeout=10)
    command = decode_command(x1.received[0])
    assert isinstance(command, ScheduleCommand)
    assert [(str(s.valid_from), str(s.valid_to)) for s in command.slots] == [("2027-02-05", "2027-02-09")]
    # On the wire the receiver reads plain YYYY-MM-DD.
    assert b'"f":"2027-02-05"' in x1.received[0] and b'"t":"2027-02-09"' in x1.received[0]


async def test_a_region_moved_under_another_brings_its_online_receivers_their_new_schedule_at_once(
        fleet, receiver, monkeypatch):
    """No birth needed: the move's outbox entry makes the leading worker bring the schedules of
    the receivers under the region up to date, whichever process (here the CLI's way, the
    registry's services) made the move."""
    monkeypatch.setattr(sync, "SYNC_INTERVAL_S", 0.2)
    created = await create(fleet, fleet.admin, name="Tiếp sóng Quân Chu", region=fleet.ids["y"], slots=[MORNING])
    assert created.status_code == 201, created.text
    x1 = receiver("x-1")
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        await wait_until(lambda: fleet.runtime.schedules is not None and fleet.runtime.schedules.checked >= 1,
                         timeout=10, what="its birth checked")
        before = len(x1.received)
        with session_scope(fleet.runtime.sessions) as s:
            registry.move_region(s, fleet.ids["x"], fleet.ids["y"])
        await wait_until(lambda: len(x1.received) > before, timeout=10, what="the new schedule, without a birth")
    command = decode_command(x1.received[-1])
    assert isinstance(command, ScheduleCommand) and [s.start for s in command.slots] == ["05:30"]
