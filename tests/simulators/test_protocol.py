"""What a virtual receiver says on the wire, checked by a real broker and an independent observer."""

from __future__ import annotations

import asyncio
import time

from fleet_service.protocol import AmpState, Event, EventKind, ResetCause, State, StateMessage, StreamState, Telemetry
from fleet_service.protocol.messages import StateReason, csq_to_dbm
from simulators.fleet import Fleet
from tests.simulators.helpers import FAST, credentials, retained_state


async def test_birth_event_telemetry_and_shutdown_are_exact(make_broker, make_observer) -> None:
    creds = credentials(3)
    broker = make_broker(creds)
    observer = make_observer(broker)
    # rx-002 was already used (a previous run left its counter at 41): it continues from there.
    fleet = Fleet(broker.host, broker.port, creds, firmware="sim-2.3.4", sessions={"rx-002": 41}, **FAST)
    started = time.time()
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await asyncio.sleep(1.2)
    finally:
        await fleet.stop()
    stopped = time.time()
    await asyncio.sleep(0.3)

    for rid in creds:
        session = 42 if rid == "rx-002" else 1
        seen = [(m, d.message) for m, d in observer.protocol_messages() if m.receiver == rid]
        states = [msg for _, msg in seen if isinstance(msg, StateMessage)]
        assert states == [
            StateMessage(state=State.ONLINE, session=session, reason=StateReason.BOOT, firmware="sim-2.3.4"),
            StateMessage(state=State.OFFLINE, session=session, reason=StateReason.SHUTDOWN),
        ]
        # Order on the wire: birth, boot event, telemetry..., goodbye.
        kinds = [type(msg).__name__ for _, msg in seen]
        assert kinds[0] == "StateMessage" and kinds[1] == "Event" and kinds[-1] == "StateMessage"
        assert set(kinds[2:-1]) == {"Telemetry"}

        events = [msg for _, msg in seen if isinstance(msg, Event)]
        assert [(e.kind, e.session, e.detail) for e in events] == [(EventKind.BOOT, session, "power_on")]

        reports = [(m, msg) for m, msg in seen if isinstance(msg, Telemetry)]
        assert len(reports) >= 4
        assert [r.seq for _, r in reports] == list(range(len(reports)))
        uptimes = [r.uptime_s for _, r in reports]
        assert uptimes == sorted(uptimes) and uptimes[0] == 0 and uptimes[-1] <= stopped - started + 1
        for m, r in reports:
            assert r.session == session
            assert r.firmware == "sim-2.3.4"
            assert r.reset_cause is ResetCause.POWER_ON
            assert r.signal_csq is not None and r.signal_dbm == csq_to_dbm(r.signal_csq)
            assert r.amplifier is AmpState.ON and r.stream is StreamState.PLAYING
            assert abs(r.sent_at - m.t) <= 1.5  # no skew configured
            assert m.retained is False

        # The clean goodbye is what stays retained; no Will was ever published.
        retained = retained_state(broker.host, broker.port, rid)
        assert retained is not None
        assert retained.message == StateMessage(state=State.OFFLINE, session=session, reason=StateReason.SHUTDOWN)
        assert fleet.status(rid).session == session
        assert fleet.status(rid).connects == 1

    assert fleet.sessions() == {"rx-000": 1, "rx-001": 1, "rx-002": 42}
    truth = list(fleet.ground_truth.transitions("rx-000"))
    assert [(t.up, t.cause) for t in truth] == [(True, "connected"), (False, "shutdown")]


async def test_receiver_republishes_birth_over_a_late_will(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, sessions={rid: 4}, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "event")
        # The Will of session 4 arrives late, after session 5's birth, and is retained.
        late_will = StateMessage(state=State.OFFLINE, session=4, reason=StateReason.LOST)
        injected = time.time()
        observer.publish(
            f"loa/v1/rx/{rid}/state", late_will.model_dump_json(by_alias=True, exclude_none=True).encode(), retain=True
        )
        rebirth = await observer.wait_for(
            lambda m: m.receiver == rid and m.kind == "state" and m.decoded().message.state is State.ONLINE,
            after=injected,
        )
        assert rebirth.decoded().message == StateMessage(
            state=State.ONLINE, session=5, reason=StateReason.BOOT, firmware=fleet.config.firmware
        )
        await asyncio.sleep(0.3)
        retained = retained_state(broker.host, broker.port, rid)
        assert retained is not None and retained.message.state is State.ONLINE and retained.message.session == 5
        status = fleet.status(rid)
        assert status.republished_births == 1 and status.session == 5 and status.connects == 1
        # Its own birth coming back on the subscription changes nothing.
        assert fleet.ground_truth.is_up(rid)
    finally:
        await fleet.stop()


async def test_commands_topic_is_subscribed_and_counted(make_broker, make_observer) -> None:
    creds = credentials(2)
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == "rx-001" and m.kind == "event")
        for _ in range(3):
            observer.publish("loa/v1/rx/rx-001/cmd", b'{"v":1}', qos=1)
        deadline = time.monotonic() + 5
        while fleet.status("rx-001").commands_received < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fleet.status("rx-001").commands_received == 3
        assert fleet.status("rx-000").commands_received == 0
    finally:
        await fleet.stop()
