"""What is particular to the virtual receivers on the wire. That they speak the protocol (births,
Wills, goodbyes, sessions, telemetry and events within the schema, QoS and retain flags,
re-asserted births, commands reaching them) is checked by the conformance suite,
tests/conformance/, which runs against the simulator by default."""

from __future__ import annotations

import asyncio
import time

from fleet_service.protocol import (
    AmpState,
    Event,
    EventKind,
    PlayReason,
    PlaySource,
    PlayStatus,
    ResetCause,
    State,
    StateMessage,
    StreamState,
    Telemetry,
)
from fleet_service.protocol.messages import StateReason, csq_to_dbm
from simulators.fleet import Fleet
from tests.simulators.helpers import FAST, credentials, retained_state


async def test_configured_sessions_firmware_values_and_goodbye_at_stop(make_broker, make_observer) -> None:
    creds = credentials(3)
    broker = make_broker(creds)
    observer = make_observer(broker)
    # rx-002 was already used (a previous run left its counter at 41): it continues from there.
    fleet = Fleet(broker.host, broker.port, creds, firmware="sim-2.3.4", sessions={"rx-002": 41}, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await asyncio.sleep(1.2)
    finally:
        await fleet.stop()
    await asyncio.sleep(0.3)

    for rid in creds:
        session = 42 if rid == "rx-002" else 1
        seen = [(m, d.message) for m, d in observer.protocol_messages() if m.receiver == rid]
        # Fleet.stop() says goodbye for every online receiver.
        states = [msg for _, msg in seen if isinstance(msg, StateMessage)]
        assert states == [
            StateMessage(state=State.ONLINE, session=session, reason=StateReason.BOOT, firmware="sim-2.3.4",
                         hardware="esp32-a7670"),
            StateMessage(state=State.OFFLINE, session=session, reason=StateReason.SHUTDOWN),
        ]
        # Order on the wire (docs/simulator.md): birth, boot event, play status, telemetry...,
        # goodbye.
        kinds = [type(msg).__name__ for _, msg in seen]
        assert kinds[:3] == ["StateMessage", "Event", "PlayStatus"] and kinds[-1] == "StateMessage"
        assert set(kinds[3:-1]) == {"Telemetry"}
        play = next(msg for _, msg in seen if isinstance(msg, PlayStatus))
        assert (play.session, play.stream, play.source, play.why, play.volume, play.priority) == (
            session, StreamState.IDLE, PlaySource.NONE, PlayReason.BOOT, 80, None)

        events = [msg for _, msg in seen if isinstance(msg, Event)]
        assert [(e.kind, e.detail) for e in events] == [(EventKind.BOOT, "power_on")]

        reports = [(m, msg) for m, msg in seen if isinstance(msg, Telemetry)]
        assert len(reports) >= 4
        assert [r.seq for _, r in reports] == list(range(len(reports)))  # from 0 in each session
        assert reports[0][1].uptime_s == 0
        for m, r in reports:
            assert r.firmware == "sim-2.3.4"
            assert r.reset_cause is ResetCause.POWER_ON
            assert r.signal_csq is not None and r.signal_dbm == csq_to_dbm(r.signal_csq)
            # Nothing plays after a boot: amplifier off, player idle, no bitrate, no bytes.
            assert r.amplifier is AmpState.OFF and r.stream is StreamState.IDLE and r.bitrate_kbps is None
            assert (r.stream_bytes, r.volume, r.schedule_version, r.clock_skew_ms) == (0, 80, None, 0)
            assert r.clock_synced_s is not None and r.clock_synced_s <= 2
            assert abs(r.sent_at - m.t) <= 1.5  # no skew configured

        retained = retained_state(broker.host, broker.port, rid)
        assert retained is not None
        assert retained.message == StateMessage(state=State.OFFLINE, session=session, reason=StateReason.SHUTDOWN)
        assert fleet.status(rid).session == session
        assert fleet.status(rid).connects == 1

    assert fleet.sessions() == {"rx-000": 1, "rx-001": 1, "rx-002": 42}
    truth = list(fleet.ground_truth.transitions("rx-000"))
    assert [(t.up, t.cause) for t in truth] == [(True, "connected"), (False, "shutdown")]


async def test_a_late_will_is_counted_and_leaves_the_ground_truth_up(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, sessions={rid: 4}, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "event")
        late_will = StateMessage(state=State.OFFLINE, session=4, reason=StateReason.LOST)
        observer.publish(
            f"loa/v1/rx/{rid}/state", late_will.model_dump_json(by_alias=True, exclude_none=True).encode(), retain=True
        )
        deadline = time.monotonic() + 5
        while fleet.status(rid).republished_births == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # its own birth coming back on the subscription changes nothing
        status = fleet.status(rid)
        assert status.republished_births == 1 and status.session == 5 and status.connects == 1
        assert fleet.ground_truth.is_up(rid)
        assert [(t.up, t.cause) for t in fleet.ground_truth.transitions(rid)] == [(True, "connected")]
    finally:
        await fleet.stop()


async def test_commands_reach_only_the_addressed_receiver(make_broker, make_observer) -> None:
    creds = credentials(2)
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == "rx-001" and m.kind == "event")
        for _ in range(3):
            observer.publish("loa/v1/rx/rx-001/cmd", b'{"v":1}', qos=1)  # each answered by a bad_command event
        deadline = time.monotonic() + 5
        while fleet.status("rx-001").commands_received < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fleet.status("rx-001").commands_received == 3
        assert fleet.status("rx-000").commands_received == 0
    finally:
        await fleet.stop()
