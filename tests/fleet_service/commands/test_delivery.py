"""Commands through the real embedded broker: delivery to receivers online and offline,
expiry, duplicates, outcomes with reasons, and the audit log."""

from __future__ import annotations

import asyncio
from typing import Any

from fleet_service.auth.models import Role
from fleet_service.commands import delivery as delivery_module
from fleet_service.commands import repository
from fleet_service.commands.delivery import CommandDelivery
from fleet_service.commands.schemas import CommandCreate, Target
from fleet_service.commands.service import Created, Issuer, create_command
from fleet_service.db import session_scope, utcnow
from fleet_service.protocol import Ack, CommandOp, Priority
from tests.fleet_service.commands.conftest import Fleet
from tests.support.waiting import eventually, wait_until

STREAM = "http://127.0.0.1:9/live.mp3"


async def send(fleet: Fleet, headers: dict[str, str], **body) -> dict:
    response = await fleet.api.post("/api/v1/commands", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


async def targets(fleet: Fleet, command_id: str, headers: dict[str, str] | None = None) -> dict[str, dict]:
    await fleet.runtime.commands.flush()
    response = await fleet.api.get(f"/api/v1/commands/{command_id}/targets", headers=headers or fleet.admin)
    assert response.status_code == 200, response.text
    return {t["receiver_id"]: t for t in response.json()}


async def test_play_to_a_station_reaches_online_receivers_now_and_offline_ones_at_their_birth(fleet, receiver):
    x1, x2 = receiver("x-1"), receiver("x-2")
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        sent = await send(fleet, fleet.operator_x, target={"station": fleet.ids["sx"]}, op="play", url=STREAM)
        assert sent["targets"] == 2
        await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("done") == 1, timeout=10)
        status = await targets(fleet, sent["id"])
        assert status["x-1"]["status"] == "done" and status["x-1"]["deliveries"] == 1
        assert status["x-2"]["status"] == "pending" and status["x-2"]["deliveries"] == 0
        async with x2.online():
            await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("done") == 2, timeout=10)
    status = await targets(fleet, sent["id"])
    assert status["x-2"]["status"] == "done" and status["x-2"]["first_sent_at"] is not None
    assert len(x1.received) == 1 and len(x2.received) == 1
    log = (await fleet.api.get(f"/api/v1/commands/{sent['id']}", headers=fleet.operator_x)).json()
    assert log["issued_by"] == "op.hungson" and log["progress"] == {"done": 2}
    assert log["params"] == {"url": STREAM}


async def test_an_offline_receiver_never_gets_an_expired_command(fleet, receiver):
    sent = await send(fleet, fleet.admin, target={"receiver": "y-1"}, op="stop", expires_in_s=1)
    await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("expired") == 1, timeout=10)
    y1 = receiver("y-1")
    async with y1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("y-1"), timeout=10)
        await asyncio.sleep(2)  # past the redelivery delay after its birth
    assert y1.received == []
    status = await targets(fleet, sent["id"])
    assert status["y-1"]["status"] == "expired" and status["y-1"]["reason"] == "not_delivered"
    assert "did not connect" in status["y-1"]["reason_text"]


async def test_a_command_without_an_answer_is_delivered_again_at_the_next_birth(fleet, receiver):
    # First connection: the receiver takes the command but dies before answering.
    silent = receiver("x-1", answer=lambda _cmd: [])
    async with silent.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        sent = await send(fleet, fleet.admin, target={"receiver": "x-1"}, op="volume", volume=70)
        await wait_until(lambda: len(silent.received) == 1, timeout=10)
    assert (await targets(fleet, sent["id"]))["x-1"]["status"] == "sent"
    # Next session: delivered again; this time it answers (a real receiver would say dup).
    silent.answer = lambda _cmd: [("done", None)]
    async with silent.online():
        await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("done") == 1, timeout=10)
    status = await targets(fleet, sent["id"])
    assert status["x-1"]["deliveries"] == 2
    assert silent.received[0] == silent.received[1]  # the same command id, byte for byte


async def test_a_duplicate_answer_does_not_change_the_outcome(fleet, receiver):
    x1 = receiver("x-1", answer=lambda _cmd: [("done", None), ("failed", "stream_error")])
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        sent = await send(fleet, fleet.admin, target={"receiver": "x-1"}, op="stop")
        await wait_until(lambda: fleet.runtime.commands.counters.acks_late >= 1, timeout=10)
    assert (await targets(fleet, sent["id"]))["x-1"]["status"] == "done"


async def test_a_rejection_is_recorded_with_its_reason_explained(fleet, receiver):
    x1 = receiver("x-1", answer=lambda _cmd: [("rejected", "lower_priority")])
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        sent = await send(fleet, fleet.admin, target={"receiver": "x-1"}, op="play", url=STREAM)
        await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("rejected") == 1, timeout=10)
    target = (await targets(fleet, sent["id"]))["x-1"]
    assert target["reason"] == "lower_priority"
    assert target["reason_text"].startswith("Đang phát bản tin ưu tiên cao hơn")


async def test_acknowledgements_for_commands_never_sent_are_counted_not_applied(fleet, receiver):
    x1 = receiver("x-1", answer=lambda _cmd: [("done", None, "made-up-id"), ("done", None)])
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        sent = await send(fleet, fleet.admin, target={"receiver": "x-1"}, op="stop")
        await wait_until(lambda: (fleet.runtime.commands.progress(sent["id"]) or {}).get("done") == 1, timeout=10)
    assert fleet.runtime.commands.counters.acks_unknown == 1
    response = await fleet.api.get("/api/v1/commands/made-up-id", headers=fleet.admin)
    assert response.status_code == 404


async def test_the_service_validates_before_anything_is_sent(fleet):
    cases = [
        ({"target": {"receiver": "x-1"}, "op": "volume", "volume": 101}, 422),
        ({"target": {"receiver": "x-1"}, "op": "play", "url": "ftp://x/y"}, 422),
        ({"target": {"receiver": "x-1"}, "op": "play"}, 422),
        ({"target": {"receiver": "x-1", "station": 1}, "op": "stop"}, 422),
        ({"target": {"receiver": "nope"}, "op": "stop"}, 404),
        ({"target": {"receiver": "x-1"}, "op": "config", "settings": {"colour": "red"}}, 422),
    ]
    for body, code in cases:
        response = await fleet.api.post("/api/v1/commands", json=body, headers=fleet.admin)
        assert response.status_code == code, (body, response.text)
        assert response.json()["error"]["message"]  # Vietnamese first
    listed = (await fleet.api.get("/api/v1/commands", headers=fleet.admin)).json()
    assert listed == []  # nothing recorded for refused commands


async def test_operators_command_and_read_only_their_commune(fleet):
    y_by_admin = await send(fleet, fleet.admin, target={"receiver": "y-1"}, op="stop")
    x_by_op = await send(fleet, fleet.operator_x, target={"region": fleet.ids["x"]}, op="stop")
    for body in ({"target": {"receiver": "y-1"}, "op": "stop"},
                 {"target": {"station": fleet.ids["sy"]}, "op": "stop"},
                 {"target": {"region": fleet.ids["y"]}, "op": "stop"}):
        response = await fleet.api.post("/api/v1/commands", json=body, headers=fleet.operator_x)
        assert response.status_code == 404, response.text
    response = await fleet.api.post("/api/v1/commands", json={"target": {"fleet": True}, "op": "stop"},
                                    headers=fleet.operator_x)
    assert response.status_code == 403
    seen = [c["id"] for c in (await fleet.api.get("/api/v1/commands", headers=fleet.operator_x)).json()]
    assert seen == [x_by_op["id"]]
    assert (await fleet.api.get(f"/api/v1/commands/{y_by_admin['id']}", headers=fleet.operator_x)).status_code == 404
    assert (await fleet.api.get(f"/api/v1/commands/{y_by_admin['id']}/targets",
                                headers=fleet.operator_x)).status_code == 404
    everything = {c["id"] for c in (await fleet.api.get("/api/v1/commands", headers=fleet.admin)).json()}
    assert everything == {y_by_admin["id"], x_by_op["id"]}


async def test_operators_see_fleet_and_district_commands_on_their_receivers_read_only(fleet):
    fleet_play = await send(fleet, fleet.admin, target={"fleet": True}, op="play", url=STREAM)
    district_volume = await send(fleet, fleet.admin, target={"region": fleet.ids["district"]}, op="volume", volume=40)
    y_only = await send(fleet, fleet.admin, target={"region": fleet.ids["y"]}, op="stop")
    listed = {c["id"]: c for c in (await fleet.api.get("/api/v1/commands", headers=fleet.operator_x)).json()}
    assert set(listed) == {fleet_play["id"], district_volume["id"]}
    # Only their own receivers are counted and listed: x-1 and x-2, not y-1.
    for sent in (fleet_play, district_volume):
        assert listed[sent["id"]]["targets"] == 2, listed[sent["id"]]
        detail = await fleet.api.get(f"/api/v1/commands/{sent['id']}", headers=fleet.operator_x)
        assert detail.status_code == 200, detail.text
        assert detail.json()["targets"] == 2 and sum(detail.json()["progress"].values()) == 2
        assert set(await targets(fleet, sent["id"], fleet.operator_x)) == {"x-1", "x-2"}
        assert set(await targets(fleet, sent["id"])) == {"x-1", "x-2", "y-1"}  # the admin sees all
    assert (await fleet.api.get(f"/api/v1/commands/{y_only['id']}", headers=fleet.operator_x)).status_code == 404
    seen_by_receiver = (await fleet.api.get("/api/v1/commands", params={"receiver": "x-1"},
                                            headers=fleet.operator_x)).json()
    assert {c["id"] for c in seen_by_receiver} == {fleet_play["id"], district_volume["id"]}

    # Seeing is not stopping: the fleet and the district are still not theirs to command.
    stop_fleet = await fleet.api.post("/api/v1/commands", json={"target": {"fleet": True}, "op": "stop"},
                                      headers=fleet.operator_x)
    assert stop_fleet.status_code == 403, stop_fleet.text
    stop_district = await fleet.api.post("/api/v1/commands", json={"target": {"region": fleet.ids["district"]},
                                                                   "op": "stop"}, headers=fleet.operator_x)
    assert stop_district.status_code == 404, stop_district.text
    everything = {c["id"] for c in (await fleet.api.get("/api/v1/commands", headers=fleet.admin)).json()}
    assert everything == {fleet_play["id"], district_volume["id"], y_only["id"]}


async def test_emergency_bulletins_need_an_account_allowed_to_send_them(fleet):
    body = {"target": {"station": fleet.ids["sx"]}, "op": "play", "url": STREAM, "priority": Priority.EMERGENCY.value}
    refused = await fleet.api.post("/api/v1/commands", json=body, headers=fleet.operator_x)
    assert refused.status_code == 403 and "khẩn cấp" in refused.json()["error"]["message"]
    stop = {"target": {"station": fleet.ids["sx"]}, "op": "stop", "priority": "emergency"}
    assert (await fleet.api.post("/api/v1/commands", json=stop, headers=fleet.operator_x)).status_code == 403
    allowed = await send(fleet, fleet.emergency_x, **body)
    assert allowed["priority"] == "emergency"
    assert (await fleet.api.post("/api/v1/commands", json={"target": {"receiver": "x-1"}, "op": "reboot"},
                                 headers=fleet.operator_x)).status_code == 403


async def test_what_a_receiver_plays_and_why_shows_in_the_live_view(fleet, receiver):
    from fleet_service.protocol import PlayStatus

    x1 = receiver("x-1")
    async with x1.online():
        await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
        status = PlayStatus(session=1, sent_at=0, stream="playing", priority="emergency", source="cmd", ref="abc123",
                            url=STREAM, volume=80, why="command", schedule_version=7)
        import aiomqtt

        # The receiver's own retained play status, as a receiver publishes it.
        async with aiomqtt.Client("127.0.0.1", x1.port, identifier="x-2", username="x-2",
                                  password=fleet.passwords["x-2"]) as client:
            await client.publish("loa/v1/rx/x-2/play", status.model_dump_json(by_alias=True, exclude_none=True),
                                 qos=1, retain=True)

    async def live_playing() -> dict[str, Any]:
        body = (await fleet.api.get("/api/v1/live/receivers", headers=fleet.operator_x)).json()
        return {r["receiver_id"]: r["playing"] for r in body["receivers"]}

    # Read from the live state the worker writes: it shows within about a second.
    playing = await eventually(live_playing, lambda p: p.get("x-2") is not None, what="x-2's play status")
    assert playing["x-1"] is None
    assert playing["x-2"]["priority"] == "emergency" and playing["x-2"]["why"] == "command"
    assert playing["x-2"]["ref"] == "abc123" and playing["x-2"]["schedule_version"] == 7


# --- pacing: publishing in slices, writing after the burst -------------------------------------

def _command_to_fleet(fleet: Fleet) -> Created:
    with session_scope(fleet.runtime.sessions) as s:
        return create_command(s, CommandCreate(target=Target(fleet=True), op=CommandOp.STOP),
                              Issuer(None, "admin", Role.ADMIN, None))


def _done(command_id: str) -> Ack:
    return Ack(session=1, command_id=command_id, status="done", sent_at=0)


async def test_a_large_command_goes_out_a_slice_per_turn_of_the_loop_and_once_to_each_target(fleet, monkeypatch):
    monkeypatch.setattr(delivery_module, "PUBLISH_SLICE", 1)
    published: list[str] = []
    delivery = CommandDelivery(fleet.runtime.sessions, publish=lambda topic, _payload: published.append(topic) or True,
                               is_online=lambda _rid: True)
    await delivery.start()
    try:
        created = _command_to_fleet(fleet)
        command = created.command
        delivery.submit(command.id, command.op, created.payload, command.expires_at, created.receiver_ids)
        await asyncio.sleep(0)  # the first slice goes out, the rest waits for later turns
        assert len(published) == 1
        # An answer read between two slices is applied at once.
        first = published[0].split("/")[3]
        delivery.on_ack(first, _done(command.id), utcnow())
        assert delivery.progress(command.id)["done"] == 1
        await wait_until(lambda: len(published) == 3, timeout=5)
        assert sorted(t.split("/")[3] for t in published) == ["x-1", "x-2", "y-1"]
        for rid in created.receiver_ids:
            delivery.on_ack(rid, _done(command.id), utcnow())
        assert delivery.progress(command.id) == {"done": 3}
        await delivery.flush()
        status = await targets(fleet, command.id)
        assert {rid: (t["status"], t["deliveries"], t["first_sent_at"] is not None) for rid, t in status.items()} == \
            {rid: ("done", 1, True) for rid in ("x-1", "x-2", "y-1")}
    finally:
        await delivery.stop()


async def test_outcomes_are_written_while_they_keep_arriving_at_the_latest_after_the_longest_delay(fleet, monkeypatch):
    # A steady trickle of answers never leaves the writer the quiet time it waits for, so
    # the longest delay must bring them to the database anyway.
    monkeypatch.setattr(delivery_module, "WRITE_QUIET_S", 0.3)
    monkeypatch.setattr(delivery_module, "WRITE_MAX_DELAY_S", 1.0)
    delivery = CommandDelivery(fleet.runtime.sessions, publish=lambda _topic, _payload: True,
                               is_online=lambda _rid: True)
    await delivery.start()
    try:
        commands = [_command_to_fleet(fleet) for _ in range(30)]
        for created in commands:
            c = created.command
            delivery.submit(c.id, c.op, created.payload, c.expires_at, created.receiver_ids)
        await asyncio.sleep(0)  # submitted commands are taken up at the loop's next turn
        written_during_trickle = False
        for created in commands:
            delivery.on_ack("x-1", _done(created.command.id), utcnow())
            await asyncio.sleep(0.1)
            with session_scope(fleet.runtime.sessions) as s:
                if repository.status_counts(s, [commands[0].command.id])[commands[0].command.id].get("done"):
                    written_during_trickle = True
                    break
        assert written_during_trickle, "no outcome written while answers kept coming every 0.1 s"
    finally:
        await delivery.stop()
