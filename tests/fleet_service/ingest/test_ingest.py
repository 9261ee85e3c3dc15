"""Ingest end to end: receivers publish through the embedded broker, the service decodes,
tracks and writes the ledger. Receivers here are plain MQTT clients so that each test can send
exactly the bytes it is about."""

from __future__ import annotations

import json

import aiomqtt
import pytest

from fleet_service.protocol.messages import State, StateMessage, StateReason
from fleet_service.runtime import Runtime
from tests.support.fleet import SmallFleet, provision_fleet
from tests.support.service import ledger, running_service, service_settings
from tests.support.waiting import wait_until


def state(session: int, st: State = State.ONLINE, reason: StateReason = StateReason.BOOT) -> bytes:
    return StateMessage(state=st, session=session, reason=reason).model_dump_json(by_alias=True).encode()


def telemetry(session: int, seq: int = 0, **overrides) -> bytes:
    body = {"v": 1, "session": session, "seq": seq, "ts": 1767225600, "up": 10, "amp": "on", "st": "playing",
            "fw": "0.1.0", "rssi": -75}
    body.update(overrides)
    return json.dumps(body).encode()


def receiver(runtime: Runtime, fleet: SmallFleet, rid: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", runtime.settings.mqtt_port, username=rid, password=fleet.credentials[rid],
                          identifier=rid, timeout=5)


@pytest.fixture
async def service(sqlite_url):
    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        yield runtime, provision_fleet(runtime.sessions, receivers=2)


async def test_birth_telemetry_and_goodbye_reach_state_and_ledger(service):
    runtime, fleet = service
    ingest = runtime.ingest
    async with receiver(runtime, fleet, "rx-0") as rx:
        await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
        await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(1, rssi=-81), qos=0)
        await wait_until(lambda: "rx-0" in ingest.telemetry, what="telemetry")
        assert ingest.telemetry["rx-0"].signal_dbm == -81
        await rx.publish("loa/v1/rx/rx-0/state", state(1, State.OFFLINE, StateReason.SHUTDOWN), qos=1, retain=True)
        await wait_until(lambda: ingest.tracker.is_online("rx-0") is False, what="offline")
    await ingest.flush()
    rows = ledger(runtime, "rx-0")
    assert [(r.state, r.start_cause, r.end_cause) for r in rows] == [("online", "birth", "shutdown"),
                                                                     ("offline", "shutdown", None)]
    assert rows[0].station_id == fleet.station_of("rx-0")
    assert rows[0].end_at == rows[1].start_at


async def test_bad_payloads_are_counted_and_dropped_and_the_loop_goes_on(service):
    runtime, fleet = service
    ingest = runtime.ingest
    async with receiver(runtime, fleet, "rx-1") as rx:
        await rx.publish("loa/v1/rx/rx-1/telemetry", b"{not json", qos=1)
        await rx.publish("loa/v1/rx/rx-1/telemetry", b"x" * 10_000, qos=1)
        await rx.publish("loa/v1/rx/rx-1/telemetry", telemetry(1, v=2), qos=1)
        await rx.publish("loa/v1/rx/rx-1/telemetry", telemetry(1, rssi=+30), qos=1)
        await rx.publish("loa/v1/rx/rx-1/event", b'{"v":1,"session":1,"ts":0,"kind":"meteor_strike"}', qos=1)
        await rx.publish("loa/v1/rx/rx-1/state", state(3), qos=1, retain=True)
        await wait_until(lambda: ingest.tracker.is_online("rx-1"), what="the valid birth after the bad ones")
    dropped = ingest.counters.dropped
    assert (dropped["json"], dropped["oversized"], dropped["version"], dropped["schema"]) == (1, 1, 1, 2)
    assert ingest.counters.accepted == 1


async def test_missing_telemetry_reports_are_counted(service):
    runtime, fleet = service
    ingest = runtime.ingest
    async with receiver(runtime, fleet, "rx-0") as rx:
        await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
        for seq in (0, 1, 4, 5):  # 2 and 3 never arrive
            await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(1, seq=seq), qos=1)
        await rx.publish("loa/v1/rx/rx-0/state", state(2, reason=StateReason.RECONNECT), qos=1, retain=True)
        await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(2, seq=0), qos=1)  # a new session starts at 0
        await wait_until(lambda: ingest.counters.accepted == 7, what="all messages")
    assert ingest.counters.telemetry_missed == 2


async def test_message_from_unregistered_receiver_is_dropped(service):
    runtime, _ = service
    runtime.ingest.handle("loa/v1/rx/ghost/telemetry", telemetry(1))
    await runtime.ingest.lookup_done()
    runtime.ingest.handle("loa/v1/rx/ghost/telemetry", telemetry(1))  # remembered as unknown: no lookup
    assert runtime.ingest.counters.dropped["unknown_receiver"] == 2
    assert runtime.ingest.tracker.is_online("ghost") is None


async def test_late_will_from_old_session_leaves_receiver_online(service):
    runtime, fleet = service
    ingest = runtime.ingest
    async with receiver(runtime, fleet, "rx-0") as rx:
        await rx.publish("loa/v1/rx/rx-0/state", state(5), qos=1, retain=True)
        await rx.publish("loa/v1/rx/rx-0/state", state(6, reason=StateReason.RECONNECT), qos=1, retain=True)
        await rx.publish("loa/v1/rx/rx-0/state", state(5, State.OFFLINE, StateReason.LOST), qos=1, retain=True)
        await wait_until(lambda: ingest.tracker.stale_messages == 1, what="the stale Will")
        assert ingest.tracker.is_online("rx-0") is True
        assert ingest.tracker.session_of("rx-0") == 6
    await ingest.flush()
    assert [(r.state, r.session) for r in ledger(runtime, "rx-0")] == [("online", 6)]


async def test_silent_receiver_on_a_live_connection_times_out_and_resumes(sqlite_url):
    """The connection stays up (the MQTT stack answers pings) but the application says nothing:
    the inactivity timeout marks the receiver offline from its last message; its next report
    brings it back."""
    settings = service_settings(sqlite_url, inactivity_timeout_s=2, startup_grace_s=0)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=1)
        ingest = runtime.ingest
        async with receiver(runtime, fleet, "rx-0") as rx:
            await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
            await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(1, seq=0), qos=1)
            await wait_until(lambda: "rx-0" in ingest.telemetry, what="telemetry")
            last_heard = ingest.tracker.last_heard("rx-0")
            await wait_until(lambda: ingest.tracker.is_online("rx-0") is False, timeout=10, what="silence noticed")
            await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(1, seq=1), qos=1)
            await wait_until(lambda: ingest.tracker.is_online("rx-0"), what="resumed")
        await ingest.flush()
        rows = ledger(runtime, "rx-0")
        assert [(r.state, r.start_cause) for r in rows] == [("online", "birth"), ("offline", "silent"),
                                                            ("online", "resumed")]
        assert rows[1].start_at == last_heard  # the outage began when it was last heard


async def test_a_receiver_moved_to_another_station_is_recorded_there_from_its_next_interval(service):
    """The move is made as the CLI makes it (the registry's services, no API): its outbox entry
    reaches the worker, whose ledger then records the receiver under its new station."""
    from fleet_service.db import session_scope
    from fleet_service.registry import service as registry
    from fleet_service.registry.schemas import ReceiverUpdate
    from tests.support.service import outbox_drained

    runtime, fleet = service
    ingest = runtime.ingest
    old_station = fleet.station_of("rx-0")
    new_station = next(s for s in fleet.station_ids if s != old_station)
    async with receiver(runtime, fleet, "rx-0") as rx:
        await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
        await wait_until(lambda: ingest.tracker.is_online("rx-0"), what="online")
        with session_scope(runtime.sessions) as session:
            registry.update_receiver(session, "rx-0", ReceiverUpdate(station_id=new_station))
        await wait_until(lambda: outbox_drained(runtime), what="the registry change applied")
        await wait_until(lambda: ingest.station_of("rx-0") == new_station, what="ingest told of the move")
        await rx.publish("loa/v1/rx/rx-0/state", state(1, State.OFFLINE, StateReason.SHUTDOWN), qos=1, retain=True)
        await wait_until(lambda: ingest.tracker.is_online("rx-0") is False, what="offline")
    await ingest.flush()
    assert [(r.state, r.station_id) for r in ledger(runtime, "rx-0")] == [("online", old_station),
                                                                          ("offline", new_station)]
