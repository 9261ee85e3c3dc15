"""What is particular to the virtual receivers' application (protocol 1.1): the ground truth of
what they played, simulated playback for large fleets, the bounded offline event queue, the
schedule's clock arithmetic and the stream's bitrate. That they speak the command protocol is
checked by the conformance suite (tests/conformance/test_commands.py, test_schedule.py)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import date

from fleet_service.protocol import Ack, AckStatus, Event, EventKind, ScheduleCommand, StreamState, Telemetry
from simulators import schedule as sched
from simulators.fleet import Fleet
from simulators.ground_truth import GroundTruth
from simulators.receiver import OFFLINE_EVENTS, Context, ReceiverConfig, VirtualReceiver
from simulators.stream import mpeg_bitrate
from tests.simulators.helpers import FAST, credentials
from tests.support.ports import free_port
from tests.support.stream_server import StreamServer, mp3_file
from tests.support.waiting import wait_until


def _command(op: str, cid: str, **fields: object) -> bytes:
    return json.dumps({"v": 1, "id": cid, "op": op, "ts": int(time.time()), "exp": int(time.time()) + 60,
                       **fields}).encode()


def _booted(observer, rid: str) -> bool:
    return any(m.receiver == rid and isinstance(d.message, Event) and d.message.kind is EventKind.BOOT
               for m, d in observer.protocol_messages())


def _acks(observer, rid: str) -> list[Ack]:
    return [d.message for m, d in observer.protocol_messages() if m.receiver == rid and isinstance(d.message, Ack)]


async def test_the_ground_truth_records_what_really_played(make_broker, make_observer, tmp_path) -> None:
    creds = credentials(2)
    broker = make_broker(creds)
    observer = make_observer(broker)
    with StreamServer() as streams:
        fleet = Fleet(broker.host, broker.port, creds, ground_truth=tmp_path / "gt.jsonl", **FAST)
        await fleet.start()
        try:
            await fleet.wait_up(timeout=30)
            # Up is the birth; the receiver subscribes to its commands after it and then sends
            # its boot event. A command sent before that would be lost (commands are not
            # retained; the service sends what waits at the next birth, a test must wait).
            await wait_until(lambda: _booted(observer, "rx-000"), 30, what="rx-000 subscribed")
            sent = time.time()
            observer.publish("loa/v1/rx/rx-000/cmd", _command("play", "c1", url=streams.url()))
            await wait_until(lambda: any(a.status is AckStatus.DONE for a in _acks(observer, "rx-000")), 30,
                             what="play done")
            done = time.time()
            assert fleet.status("rx-000").playing == "cmd:c1"
            observer.publish("loa/v1/rx/rx-000/cmd", _command("play", "c2", url=streams.url(), pri="emergency"))
            await wait_until(lambda: fleet.status("rx-000").playing == "cmd:c2", 30, what="c2 playing")
            observer.publish("loa/v1/rx/rx-000/cmd", _command("stop", "c3", pri="emergency"))
            await wait_until(lambda: fleet.status("rx-000").playing is None, 30, what="stopped")
            stopped = time.time()
            await fleet.power_loss("rx-001")  # never played: nothing to record
        finally:
            await fleet.stop()
    played = fleet.ground_truth.played("rx-000")
    assert [(p.source, p.ref, p.priority, p.why) for p in played] == [
        ("cmd", "c1", "normal", "preempted"), ("cmd", "c2", "emergency", "stopped")]
    # c1 stops when c2 preempts it; c2 plays once its stream has opened, a moment later.
    assert sent <= played[0].start <= done and played[0].end <= played[1].start <= played[1].end <= stopped
    assert fleet.ground_truth.played("rx-001") == []
    assert GroundTruth.load(tmp_path / "gt.jsonl").played("rx-000") == played


async def test_simulated_playback_needs_no_stream_server(make_broker, make_observer) -> None:
    """Without fetching (large fleets), any URL "plays" at the nominal bitrate."""
    creds = credentials(1)
    broker = make_broker(creds)
    observer = make_observer(broker)
    fleet = Fleet(broker.host, broker.port, creds, fetch_streams=False, stream_kbps=32, **FAST)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=10)
        observer.publish("loa/v1/rx/rx-000/cmd", _command("play", "c1", url=f"http://127.0.0.1:{free_port()}/x.mp3"))
        await wait_until(lambda: fleet.status("rx-000").playing == "cmd:c1", 5, what="simulated playback")
        await asyncio.sleep(1.5)
    finally:
        await fleet.stop()
    reports = [d.message for m, d in observer.protocol_messages()
               if isinstance(d.message, Telemetry) and d.message.stream is StreamState.PLAYING]
    assert len(reports) >= 3 and all(r.bitrate_kbps == 32 for r in reports)
    rate = (reports[-1].stream_bytes - reports[0].stream_bytes) / ((reports[-1].seq - reports[0].seq) * 0.3)
    assert 32 * 125 * 0.7 <= rate <= 32 * 125 * 1.3, f"{rate:.0f} bytes/s simulated at 32 kbit/s"


async def test_events_wait_offline_in_a_bounded_queue() -> None:
    config = ReceiverConfig("127.0.0.1", free_port())
    rx = VirtualReceiver("rx-000", "x", Context(config, random.Random(1), GroundTruth()))
    for i in range(OFFLINE_EVENTS + 4):
        rx._event(EventKind.BAD_COMMAND, f"malformed:{i}")
    assert rx.status().events_queued == OFFLINE_EVENTS
    details = [entry[1] for entry in rx._events or ()]
    assert details == [f"malformed:{i}" for i in range(4, OFFLINE_EVENTS + 4)]  # the oldest went first


def test_slots_are_found_by_the_station_day_and_time() -> None:
    schedule = ScheduleCommand.model_validate({
        "id": "s", "ts": 0, "exp": 1, "ver": 1, "tz": 420, "slots": [
            {"id": "morning", "s": "05:30", "e": "06:00", "d": 1 + 4, "u": "http://x/a.mp3"},  # Mon, Wed
            {"id": "once", "s": "17:00:30", "e": "17:01", "u": "http://x/b.mp3", "f": "2026-01-07", "t": "2026-01-07"},
        ]})
    monday = 1767571200.0  # 2026-01-05 00:00 UTC = 07:00 in Hanoi, a Monday
    assert date(2026, 1, 5).weekday() == 0
    # 05:30 Hanoi on Monday is 22:30 UTC on Sunday.
    start = monday - 1800 - 3600
    assert sched.active(schedule, start - 1) is None
    slot, occurrence, end = sched.active(schedule, start)  # type: ignore[misc]
    assert (slot.slot_id, occurrence, end) == ("morning", "morning@2026-01-05", start + 1800)
    assert sched.next_boundary(schedule, start - 100) == start
    assert sched.next_boundary(schedule, start) == start + 1800
    # Not on Tuesday; again on Wednesday.
    assert sched.next_boundary(schedule, start + 1800) == start + 2 * 86400
    # A dated slot in force on its one day only, with seconds.
    once = 1767744000.0 + 10 * 3600 + 30  # 2026-01-07 17:00:30 in Hanoi
    assert sched.active(schedule, once)[1] == "once@2026-01-07"  # type: ignore[index]
    assert sched.active(schedule, once + 86400 * 7) is None


def test_the_bitrate_comes_from_the_mpeg_frame_header() -> None:
    for kbps in (32, 64, 128):
        assert mpeg_bitrate(mp3_file(kbps).read_bytes()[:4096]) == kbps
    assert mpeg_bitrate(b"ID3\x03\x00" + bytes(100)) is None
    assert mpeg_bitrate(b"\xff\xfb") is None
