"""Faults against a real Mosquitto: what the broker (and so the service) sees, and the ground truth."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import time
from pathlib import Path

from fleet_service.protocol import Event, EventKind, ResetCause, State, StateMessage, Telemetry
from fleet_service.protocol.messages import StateReason
from simulators import receiver
from simulators.fleet import Fleet
from simulators.scenario import Fault, FaultKind
from tests.simulators.helpers import FAST, Seen, credentials
from tests.support.waiting import wait_until


def _state(m: Seen, state: State, session: int | None = None) -> bool:
    if m.kind != "state":
        return False
    msg = m.decoded().message
    return msg.state is state and (session is None or msg.session == session)


async def test_link_cut_will_only_after_keepalive_expiry_then_reconnect(make_broker, make_observer) -> None:
    keepalive = 2
    creds = credentials(2)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **{**FAST, "keepalive": keepalive})
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        # Cut right after a report went through, so the broker last heard from it just now.
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry", after=time.time())
        before_cut = time.time()
        await fleet.cut_link(rid, 8.0)
        after_cut = time.time()

        will = await observer.wait_for(lambda m: m.receiver == rid and _state(m, State.OFFLINE), timeout=10)
        assert will.decoded().message == StateMessage(state=State.OFFLINE, session=1, reason=StateReason.LOST)
        # Mosquitto gives up after 1.5 x keepalive of silence (counted in whole seconds, checked
        # about once a second): never sooner than the keepalive, and before the link comes back.
        assert keepalive <= will.t - before_cut < 8.0
        assert "Client rx-000 has exceeded timeout" in broker.log

        birth = await observer.wait_for(lambda m: m.receiver == rid and _state(m, State.ONLINE, 2), timeout=10)
        assert birth.t >= before_cut + 8.0
        message = birth.decoded().message
        assert message.model_copy(update={"offline_s": None}) == StateMessage(
            state=State.ONLINE, session=2, reason=StateReason.RECONNECT, firmware=fleet.config.firmware,
            hardware=fleet.config.hardware,
        )
        # "off": time since the receiver last heard the broker, which was at most a keepalive
        # (its last ping answer) before the cut.
        assert birth.t - before_cut - 0.3 <= message.offline_s <= birth.t - before_cut + keepalive + 0.3
        lost = await observer.wait_for(lambda m: m.receiver == rid and m.kind == "event", after=birth.t)
        event = lost.decoded().message
        assert isinstance(event, Event)
        assert (event.kind, event.session, event.detail) == (EventKind.LINK_LOST, 2, "ping_timeout")
        report = await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry", after=birth.t)
        telemetry = report.decoded().message
        assert isinstance(telemetry, Telemetry)
        assert (telemetry.session, telemetry.seq, telemetry.reset_cause) == (2, 0, ResetCause.POWER_ON)

        truth = list(fleet.ground_truth.transitions(rid))
        assert [(t.up, t.cause) for t in truth] == [(True, "connected"), (False, "link_cut"), (True, "connected")]
        assert before_cut <= truth[1].t <= after_cut  # down at the exact moment of the cut
        assert truth[2].t >= before_cut + 8.0
        # Nothing happened to the other receiver.
        assert fleet.status("rx-001").session == 1
        assert [(t.up, t.cause) for t in fleet.ground_truth.transitions("rx-001")] == [(True, "connected")]
    finally:
        await fleet.stop()


async def test_short_cuts_the_session_survives_are_still_down_in_the_ground_truth(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **{**FAST, "keepalive": 2})
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await asyncio.sleep(0.5)
        before_cut = time.time()
        await fleet.cut_link(rid, 0.6, wait=True)
        restored = time.time()
        await asyncio.sleep(0.3)  # the restore is confirmed by a ping round trip
        await fleet.flap_link(rid, 2.5, cut=(0.2, 0.5), gap=(0.2, 0.4), wait=True)
        await asyncio.sleep(1.0)
        sent = fleet.status(rid).telemetry_sent
    finally:
        await fleet.stop()
    await asyncio.sleep(0.3)

    # The broker never noticed: one session, no Will, and the reports written during the cuts
    # were held and delivered afterwards, none lost.
    states = [d.message for m, d in observer.protocol_messages() if m.receiver == rid and m.kind == "state"]
    assert [(s.state, s.session, s.reason) for s in states] == [
        (State.ONLINE, 1, StateReason.BOOT), (State.OFFLINE, 1, StateReason.SHUTDOWN)
    ]
    seqs = [d.message.seq for m, d in observer.protocol_messages() if m.receiver == rid and m.kind == "telemetry"]
    assert seqs == list(range(sent))
    assert fleet.status(rid).connects == 1

    truth = list(fleet.ground_truth.transitions(rid))
    causes = [(t.up, t.cause) for t in truth]
    assert causes[:3] == [(True, "connected"), (False, "link_cut"), (True, "link_restored")]
    assert before_cut <= truth[1].t <= before_cut + 0.05
    assert restored - 0.05 <= truth[2].t <= restored  # up again from the restore itself
    flaps = causes[3:-1]
    assert len(flaps) >= 4 and flaps == [(False, "link_cut"), (True, "link_restored")] * (len(flaps) // 2)
    assert causes[-1] == (False, "shutdown")


async def test_power_loss_goes_silent_then_boots(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **{**FAST, "keepalive": 2})
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry")
        lost_power = time.time()
        # Off for longer than the broker takes to time the connection out (about 4-6 s here).
        await fleet.power_loss(rid, 7.0)
        will = await observer.wait_for(lambda m: m.receiver == rid and _state(m, State.OFFLINE), timeout=10)
        assert will.decoded().message == StateMessage(state=State.OFFLINE, session=1, reason=StateReason.LOST)
        assert will.t - lost_power >= 2.0  # keepalive expiry, not a closed socket
        # No FIN, no DISCONNECT: the broker only timed it out.
        log = broker.log
        assert "Client rx-000 has exceeded timeout" in log
        assert not re.search(r"Client rx-000 (closed its connection|disconnected)", log)

        birth = await observer.wait_for(lambda m: m.receiver == rid and _state(m, State.ONLINE, 2), timeout=10)
        assert birth.t >= lost_power + 7.0
        assert birth.decoded().message.reason is StateReason.BOOT
        boot = await observer.wait_for(lambda m: m.receiver == rid and m.kind == "event", after=birth.t)
        assert (boot.decoded().message.kind, boot.decoded().message.detail) == (EventKind.BOOT, "power_on")
        report = await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry", after=birth.t)
        telemetry = report.decoded().message
        assert isinstance(telemetry, Telemetry)
        assert telemetry.session == 2 and telemetry.seq == 0
        assert telemetry.reset_cause is ResetCause.POWER_ON
        assert telemetry.uptime_s <= 1  # uptime restarted with the boot

        truth = list(fleet.ground_truth.transitions(rid))
        assert [(t.up, t.cause) for t in truth] == [(True, "connected"), (False, "power_loss"), (True, "connected")]
        assert lost_power <= truth[1].t <= lost_power + 0.05
        assert truth[2].t >= lost_power + 7.0
    finally:
        await fleet.stop()
    await asyncio.sleep(0.3)
    # Nothing was sent by the powered-off receiver: the shutdown at the end is session 2's.
    states = [d.message for m, d in observer.protocol_messages() if m.receiver == rid and m.kind == "state"]
    assert [(s.state, s.session, s.reason) for s in states] == [
        (State.ONLINE, 1, StateReason.BOOT),
        (State.OFFLINE, 1, StateReason.LOST),
        (State.ONLINE, 2, StateReason.BOOT),
        (State.OFFLINE, 2, StateReason.SHUTDOWN),
    ]


async def test_clean_reboot_says_goodbye_and_boots_soft(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry")
        rebooted = time.time()
        await fleet.clean_reboot(rid, 0.5, wait=True)
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry", after=rebooted + 0.5)
        await asyncio.sleep(2.5)  # longer than a keepalive expiry: a Will would have come by now
        truth = list(fleet.ground_truth.transitions(rid))
    finally:
        await fleet.stop()
    await asyncio.sleep(0.3)

    seen = [(m, d.message) for m, d in observer.protocol_messages() if m.receiver == rid]
    states = [msg for _, msg in seen if isinstance(msg, StateMessage)]
    assert [(s.state, s.session, s.reason) for s in states] == [
        (State.ONLINE, 1, StateReason.BOOT),
        (State.OFFLINE, 1, StateReason.SHUTDOWN),
        (State.ONLINE, 2, StateReason.BOOT),
        (State.OFFLINE, 2, StateReason.SHUTDOWN),
    ]
    events = [msg for _, msg in seen if isinstance(msg, Event)]
    assert [(e.kind, e.session, e.detail) for e in events] == [(EventKind.BOOT, 1, "power_on"), (EventKind.BOOT, 2, "soft")]
    after = [msg for _, msg in seen if isinstance(msg, Telemetry) and msg.session == 2]
    assert after and all(t.reset_cause is ResetCause.SOFT for t in after)
    assert re.search(r"Client rx-000 disconnected\.", broker.log)

    assert [(t.up, t.cause) for t in truth] == [(True, "connected"), (False, "shutdown"), (True, "connected")]
    assert rebooted <= truth[1].t <= rebooted + 0.05
    assert truth[2].t >= truth[1].t + 0.5


async def test_clock_skew_is_synced_away_reported_and_never_in_the_ground_truth(make_broker, make_observer) -> None:
    """rx-000 boots an hour fast and syncs at link-up: it says so (clock_sync event, telemetry
    skew) and stamps the right time. rx-001 never syncs: its stamps stay two hours slow and it
    reports no skew. rx-002's clock jumps after its sync: its stamps move until the next one."""
    creds = credentials(3)
    broker = make_broker(creds)
    observer = make_observer(broker)
    started = time.time()
    fleet = Fleet(broker.host, broker.port, creds, clock_skew={"rx-000": 3600.0, "rx-001": -7200.0},
                  unsynced={"rx-001"}, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await observer.wait_for(lambda m: m.receiver == "rx-002" and m.kind == "telemetry")
        fleet.set_clock_skew("rx-002", 600.0)
        changed = time.time()
        await asyncio.sleep(1.0)
    finally:
        await fleet.stop()
    ended = time.time()
    await asyncio.sleep(0.3)

    def stamped(rid: str, after: float = 0.0) -> list[tuple[Seen, Telemetry | Event]]:
        return [(m, d.message) for m, d in observer.protocol_messages()
                if m.receiver == rid and isinstance(d.message, (Telemetry, Event)) and m.t > after]

    synced = stamped("rx-000")
    assert synced and all(abs(msg.sent_at - m.t) <= 1.5 for m, msg in synced)
    assert [e.detail for _, e in synced if isinstance(e, Event) and e.kind is EventKind.CLOCK_SYNC] == ["ntp:3600000"]
    reports = [r for _, r in synced if isinstance(r, Telemetry)]
    assert all(r.clock_skew_ms == 3_600_000 and r.clock_synced_s is not None and r.clock_synced_s <= 3 for r in reports)

    unsynced = stamped("rx-001")
    assert unsynced and all(abs(msg.sent_at - (m.t - 7200)) <= 1.5 for m, msg in unsynced)
    assert all(r.clock_skew_ms is None and r.clock_synced_s is None for _, r in unsynced if isinstance(r, Telemetry))
    assert not [e for _, e in unsynced if isinstance(e, Event) and e.kind is EventKind.CLOCK_SYNC]

    jumped = stamped("rx-002", after=changed + 0.1)
    assert jumped and all(abs(msg.sent_at - (m.t + 600)) <= 1.5 for m, msg in jumped)
    assert all(r.clock_skew_ms == 0 for _, r in jumped if isinstance(r, Telemetry))  # measured at its sync

    for rid in creds:
        for transition in fleet.ground_truth.transitions(rid):
            assert started <= transition.t <= ended  # wall clock, whatever the receiver's clock says


async def test_backoff_spreads_reconnects_after_a_broker_restart(make_broker, make_observer) -> None:
    creds = credentials(50)
    broker = make_broker(creds)
    fleet = Fleet(
        broker.host, broker.port, creds,
        **{**FAST, "keepalive": 5, "telemetry_interval": 5.0, "backoff_base": 0.25, "backoff_cap": 3.0, "attach_delay": (0.0, 0.5)},
    )
    await fleet.start()
    try:
        await fleet.wait_up(timeout=15)
        broker.stop()
        stopped = time.time()
        await asyncio.sleep(2.0)
        broker.start()
        restarted = time.time()
        observer = make_observer(broker)
        await fleet.wait_up(timeout=20)
        await asyncio.sleep(0.3)

        ups = []
        for rid in creds:
            truth = list(fleet.ground_truth.transitions(rid))
            assert [t.up for t in truth] == [True, False, True]
            # The broker's shutdown closes (or resets) every connection.
            assert truth[1].cause in ("connection_closed", "connection_reset") and truth[2].cause == "connected"
            assert stopped - 0.5 <= truth[1].t <= stopped + 0.5
            ups.append(truth[2].t - restarted)
            # Failed TCP connects send no CONNECT: exactly one new session each.
            assert fleet.status(rid).session == 2
        births = {m.receiver: (m, d.message) for m, d in observer.protocol_messages() if m.kind == "state"}
        assert len(births) == 50
        for m, birth in births.values():
            # The reconnect birth (live or retained) tells how long the receiver was without
            # the broker: from before the broker stopped until its reconnection.
            assert (birth.state, birth.session, birth.reason) == (State.ONLINE, 2, StateReason.RECONNECT)
            assert 2.0 <= birth.offline_s <= m.t - stopped + 0.5
        ups.sort()
        # Without jitter all 50 would be back within a few milliseconds. With full jitter the
        # first attempts after the restart follow the backoff's residual wait: front-loaded (a
        # receiver that retried just before the restart waits longest) but spread over seconds.
        assert ups[-1] - ups[0] >= 1.0, ups
        assert ups[len(ups) // 2] >= 0.3, ups
        busiest = max(sum(1 for u in ups if start <= u < start + 0.1) for start in ups)
        assert busiest <= 15, ups
    finally:
        await fleet.stop()


async def test_wrong_password_is_a_clear_error_retried_with_backoff(make_broker, make_observer) -> None:
    creds = credentials(2)
    broker = make_broker(creds)
    observer = make_observer(broker)
    given = {**creds, "rx-001": "not-the-password"}
    fleet = Fleet(broker.host, broker.port, given, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(["rx-000"], timeout=10)
        await asyncio.sleep(3.0)
        status = fleet.status("rx-001")
        assert status.powered and not status.online and not status.really_up
        assert status.last_error == "NotAuthorized: connection refused (CONNACK 5: not authorized)"
        # Retried, but with backoff (base 0.1 s, cap 0.5 s): not hundreds of attempts.
        assert 3 <= status.refused <= 40
        assert status.connects == status.refused
        assert status.session == status.connects  # incremented before every CONNECT
        assert fleet.ground_truth.is_up("rx-000")
        assert not list(fleet.ground_truth.transitions("rx-001"))
        assert not observer.messages("rx-001")
    finally:
        await fleet.stop()


async def test_board_faults_of_a_scenario_raise_the_board_events(make_broker, make_observer) -> None:
    creds = credentials(1)
    rid = "rx-000"
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, fetch_streams=False, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        await fleet.inject(Fault(rid, FaultKind.LOW_SUPPLY, 0.0, 0.5), wait=True)
        await fleet.inject(Fault(rid, FaultKind.LOW_SUPPLY, 0.0, 0.5), wait=True)  # armed again in between
        # The amplifier fault shows only while it plays (simulated playback here).
        observer.publish(f"loa/v1/rx/{rid}/cmd", json.dumps({
            "v": 1, "id": "c1", "op": "play", "ts": int(time.time()), "exp": int(time.time()) + 60,
            "url": "http://127.0.0.1:9/x.mp3"}).encode())
        await wait_until(lambda: fleet.status(rid).playing == "cmd:c1", 5, what="simulated playback")
        await fleet.inject(Fault(rid, FaultKind.AMP_FAULT, 0.0, receiver.AMP_SETTLE_S + 0.5), wait=True)
        await asyncio.sleep(receiver.AMP_SETTLE_S + 0.5)
        fleet.set_readings(rid, temperature_c=91.0)
        await observer.wait_for(lambda m: m.receiver == rid and m.kind == "event"
                                and m.decoded().message.kind is EventKind.OVERHEAT)
        report = await observer.wait_for(lambda m: m.receiver == rid and m.kind == "telemetry"
                                         and m.decoded().message.temperature_c == 91.0)
    finally:
        await fleet.stop()
    board = {EventKind.LOW_SUPPLY, EventKind.OVERHEAT, EventKind.AMP_FAULT, EventKind.AMP_RECOVERED}
    events = [d.message for m, d in observer.protocol_messages()
              if isinstance(d.message, Event) and d.message.kind in board]
    assert [(e.kind, e.detail) for e in events] == [
        (EventKind.LOW_SUPPLY, None), (EventKind.LOW_SUPPLY, None), (EventKind.AMP_FAULT, None),
        (EventKind.AMP_RECOVERED, None), (EventKind.OVERHEAT, None)]
    assert report.decoded().message.supply_v == 12.2  # back to normal after the faults


def test_the_board_thresholds_are_the_firmwares() -> None:
    # firmware/loa/app.py is MicroPython: its constants are read from the source.
    tree = ast.parse((Path(__file__).resolve().parents[2] / "firmware/loa/app.py").read_text())
    firmware = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in ("LOW_SUPPLY_V", "SUPPLY_OK_V", "OVERHEAT_C", "COOL_C", "AMP_CHECKS",
                                           "TICK_MS")}
    assert (receiver.LOW_SUPPLY_V, receiver.SUPPLY_OK_V, receiver.OVERHEAT_C, receiver.COOL_C) == (
        firmware["LOW_SUPPLY_V"], firmware["SUPPLY_OK_V"], firmware["OVERHEAT_C"], firmware["COOL_C"])
    assert receiver.AMP_SETTLE_S == firmware["AMP_CHECKS"] * firmware["TICK_MS"] / 1000
