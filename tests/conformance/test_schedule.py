"""The broadcast schedule (protocol 1.1), seen from the broker: stored across power loss, its
version in play status and telemetry, slots started and stopped on time by the receiver's own
clock, against commands by priority, played while the link is cut and reported afterwards,
and not run by a receiver whose clock never synced."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import date, timedelta

from fleet_service.protocol import AckStatus, Event, EventKind, PlayReason, PlaySource, State, StreamState, Telemetry
from tests.conformance.bench import (
    CONNECT_DEADLINE,
    RECONNECT_DEADLINE,
    STAMP_SLACK,
    STATION_TZ_MIN,
    STREAM_DEADLINE,
    Bench,
    clear_of_midnight,
    command,
    now,
    slot,
    utc,
    wall,
)
from tests.support.stream_server import StreamServer

# Slots of the timing tests start this long after the schedule is sent (time for its ack).
LEAD_S = 3.0
# How late (or early) a slot may start or stop as the observer sees it: the receiver's clock
# is synced to within a fraction of a second, slot times are whole seconds, and the stream
# opens on loopback in milliseconds.
ON_TIME_S = 1.5
# Long enough for the receiver to give up its silent connection (as in test_reconnect), so the
# slot's events wait in its offline queue for the next birth.
CUT_S = 12.0


def _schedule(command_id: str, version: int, *slots: dict) -> dict:
    return command("schedule", command_id, ver=version, tz=STATION_TZ_MIN, slots=list(slots))


def _far_slot(url: str) -> dict:
    """A slot that is not in force for a month."""
    day = (date.today() + timedelta(days=30)).isoformat()
    return {"id": "later", "s": "06:00", "e": "06:30", "d": 127, "u": url, "f": day, "t": day}


async def _store(bench: Bench, schedule: dict) -> float:
    sent = await bench.send(schedule)
    await bench.ack(schedule["id"], AckStatus.DONE, after=sent)
    return sent


def _on_time(event: Event, seen_t: float, due: float, what: str) -> None:
    assert abs(event.sent_at - due) <= STAMP_SLACK, f"{what} stamped {utc(event.sent_at)}, due {utc(due)}"
    assert abs(wall(seen_t) - due) <= ON_TIME_S + STAMP_SLACK, f"{what} seen at {utc(wall(seen_t))}, due {utc(due)}"


async def test_schedule_is_stored_and_its_version_reported(bench: Bench, stream_server: StreamServer) -> None:
    await bench.start_synced()
    url = stream_server.url("/live.mp3")
    sent = await _store(bench, _schedule("s-v7", 7, _far_slot(url)))
    await bench.play_status(lambda p: p.schedule_version == 7, after=sent, what="play status with sched 7")
    await bench.observer.wait_for(lambda m, r: isinstance(r, Telemetry) and r.schedule_version == 7, timeout=3,
                                  after=sent, what="telemetry with sched 7")

    # Kept in persistent storage across a power loss.
    await bench.driver.power_off()
    powered = now()
    await bench.driver.power_on()
    _, birth = await bench.observer.wait_state(State.ONLINE, timeout=CONNECT_DEADLINE, after=powered,
                                               what="birth after power-on")
    await bench.play_status(lambda p: p.session == birth.session and p.schedule_version == 7, after=powered,
                            what="play status after the birth with sched 7")
    await bench.observer.wait_for(
        lambda m, r: isinstance(r, Telemetry) and r.session == birth.session and r.schedule_version == 7,
        timeout=5, after=powered, what="telemetry of the new session with sched 7")

    # A bad schedule is rejected and changes nothing; a good one replaces the whole schedule.
    overlapping = _schedule("s-bad", 9, {"id": "a", "s": "06:00", "e": "07:00", "u": url},
                            {"id": "b", "s": "06:59", "e": "08:00", "u": url})
    sent = await bench.send(overlapping)
    assert (await bench.ack("s-bad", AckStatus.REJECTED, after=sent)).reason == "bad_schedule"
    sent = await _store(bench, _schedule("s-v8", 8))
    await bench.play_status(lambda p: p.schedule_version == 8, after=sent, what="play status with sched 8")
    assert all(p.schedule_version != 9 for _, p in bench.observer.messages() if hasattr(p, "schedule_version"))
    await bench.finish()


async def test_a_slot_starts_and_stops_on_time(bench: Bench, stream_server: StreamServer) -> None:
    await bench.start_synced()
    await clear_of_midnight(LEAD_S + 10)
    start = float(int(time.time() + LEAD_S) + 1)
    end = start + 3
    sent = await _store(bench, _schedule("s-timed", 1, slot("news", start, end, stream_server.url("/live.mp3"))))

    seen, began = await bench.event(EventKind.PLAY_STARTED, "sched:news", after=sent, timeout=LEAD_S + STREAM_DEADLINE)
    _on_time(began, seen.t, start, "play_started")
    _, status = await bench.play_status(lambda p: p.ref == "news" and p.stream is StreamState.PLAYING, after=sent,
                                        what="the slot playing")
    assert (status.source, status.why) == (PlaySource.SCHEDULE, PlayReason.SCHEDULE), status
    seen, ended = await bench.event(EventKind.PLAY_STOPPED, "ended:news", after=sent, timeout=end - time.time() + 5)
    _on_time(ended, seen.t, end, "play_stopped")
    _, status = await bench.play_status(lambda p: p.stream is StreamState.IDLE, after=seen.t - 1, what="idle after the slot")
    assert status.why is PlayReason.ENDED, status
    assert stream_server.requests >= 1, "the slot played without fetching its stream"
    await bench.finish()


async def test_slots_and_commands_by_priority(bench: Bench, stream_server: StreamServer) -> None:
    await bench.start_synced()
    await clear_of_midnight(LEAD_S + 20)
    url = stream_server.url("/live.mp3")
    t = float(int(time.time() + LEAD_S) + 1)
    sent = await bench.send(command("play", "k-normal", url=url))
    await bench.ack("k-normal", AckStatus.DONE, after=sent, timeout=STREAM_DEADLINE)
    # A priority slot takes over from a normal command, and nothing resumes when it ends.
    await _store(bench, _schedule("s-prio", 2, slot("alert", t, t + 3, url, p="priority"),
                                  slot("music", t + 6, t + 9, url)))
    seen, _ = await bench.event(EventKind.PLAY_STARTED, "sched:alert", after=sent, timeout=LEAD_S + STREAM_DEADLINE)
    await bench.event(EventKind.PLAY_STOPPED, "preempted:k-normal", after=sent)
    await bench.event(EventKind.PLAY_STOPPED, "ended:alert", after=seen.t, timeout=8)
    # An emergency command plays through a normal slot's start.
    sent = await bench.send(command("play", "k-emergency", url=url, pri="emergency"))
    await bench.ack("k-emergency", AckStatus.DONE, after=sent, timeout=STREAM_DEADLINE)
    await asyncio.sleep(max(0.0, t + 10 - time.time()))
    assert "sched:music" not in [e.detail for e in bench.events(EventKind.PLAY_STARTED, after=sent)], (
        "a normal slot started over an emergency")
    latest = bench.latest_play_status()
    assert latest is not None and latest.ref == "k-emergency" and latest.stream is StreamState.PLAYING, latest
    await bench.finish()


async def test_a_slot_plays_while_the_link_is_cut_and_is_reported_afterwards(
        bench: Bench, stream_server: StreamServer) -> None:
    await bench.start_synced()
    await clear_of_midnight(CUT_S + 10)
    start = float(int(time.time() + LEAD_S) + 2)
    end = start + 3
    await _store(bench, _schedule("s-offline", 3, slot("offline", start, end, stream_server.url("/live.mp3"))))
    cut = now()
    await bench.cut_link(CUT_S)
    assert time.time() < start, "the cut began after the slot"

    # Back after the cut: a new session, then the slot's events with the times they happened.
    seen_birth, birth = await bench.observer.wait_state(
        State.ONLINE, timeout=CUT_S + RECONNECT_DEADLINE, after=cut + CUT_S - 0.5, what="birth after the cut")
    seen, began = await bench.event(EventKind.PLAY_STARTED, "sched:offline", after=cut, timeout=5)
    assert seen.t >= cut + CUT_S - 0.5, "play_started went through a cut link"
    assert abs(began.sent_at - start) <= STAMP_SLACK, f"play_started stamped {utc(began.sent_at)}, due {utc(start)}"
    seen, ended = await bench.event(EventKind.PLAY_STOPPED, "ended:offline", after=cut, timeout=5)
    assert abs(ended.sent_at - end) <= STAMP_SLACK, f"play_stopped stamped {utc(ended.sent_at)}, due {utc(end)}"
    assert began.session == ended.session == birth.session
    assert stream_server.requests >= 1, "the slot was reported but its stream never fetched"
    await bench.finish()


async def test_an_unsynced_receiver_runs_no_schedule(bench: Bench, stream_server: StreamServer) -> None:
    bench.spec = dataclasses.replace(bench.spec, clock_sync=False)
    await bench.start()
    await clear_of_midnight(LEAD_S + 10)
    start = float(int(time.time() + LEAD_S) + 1)
    sent = await _store(bench, _schedule("s-unsynced", 4, slot("blind", start, start + 2, stream_server.url())))
    await bench.play_status(lambda p: p.schedule_version == 4, after=sent, what="the schedule stored")
    await asyncio.sleep(max(0.0, start + 3 - time.time()))
    assert not bench.events(EventKind.PLAY_STARTED, after=sent), "ran a schedule on a clock never synced"
    assert stream_server.requests == 0
    await bench.finish()
