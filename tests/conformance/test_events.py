"""Events beside the lifecycle and playback (docs/protocol.md, "Events"): one ``stream_error``
per stream that fails to open or breaks while playing, and the board events ``low_supply``,
``overheat``, ``amp_fault`` / ``amp_recovered``, raised once per crossing of their threshold
(the board's readings are set through the driver's optional ``set_readings``)."""

from __future__ import annotations

import asyncio

from fleet_service.protocol import AckStatus, AmpState, Event, EventKind, Telemetry
from tests.conformance.bench import ACK_DEADLINE, STREAM_DEADLINE, TELEMETRY_INTERVAL, Bench, command, now
from tests.support.ports import free_port
from tests.support.stream_server import StreamServer

# Long enough for a reading to be checked (the firmware checks its board every 250 ms).
READING_S = 0.6
# The amplifier must read the same for 2 s before amp_fault / amp_recovered.
AMP_DEADLINE = 2.0 + ACK_DEADLINE


async def test_a_stream_that_fails_or_breaks_is_one_stream_error(bench: Bench, stream_server: StreamServer) -> None:
    await bench.start()
    started = now()
    dead = f"http://127.0.0.1:{free_port()}/gone.mp3"
    sent = await bench.send(command("play", "c-dead", url=dead))
    failed = await bench.ack("c-dead", AckStatus.FAILED, after=sent, timeout=STREAM_DEADLINE)
    assert failed.reason == "stream_unreachable", failed
    await bench.event(EventKind.STREAM_ERROR, "cmd:c-dead", after=sent)

    # Plays, then the server closes the connection halfway through its announced length.
    sent = await bench.send(command("play", "c-cut", url=stream_server.url("/short.mp3?seconds=3&cut=1")))
    await bench.event(EventKind.PLAY_STARTED, "cmd:c-cut", after=sent, timeout=STREAM_DEADLINE)
    await bench.event(EventKind.PLAY_STOPPED, "stream_error:c-cut", after=sent, timeout=STREAM_DEADLINE)
    await asyncio.sleep(0.5)
    kinds = [(e.kind, e.detail) for _, e in bench.observer.messages(Event, after=started)
             if e.kind in (EventKind.STREAM_ERROR, EventKind.PLAY_STARTED, EventKind.PLAY_STOPPED)]
    assert kinds == [(EventKind.STREAM_ERROR, "cmd:c-dead"), (EventKind.PLAY_STARTED, "cmd:c-cut"),
                     (EventKind.STREAM_ERROR, "cmd:c-cut"), (EventKind.PLAY_STOPPED, "stream_error:c-cut")], kinds
    await bench.finish()


async def _readings(bench: Bench, **readings: object) -> None:
    await bench.set_readings(**readings)
    await asyncio.sleep(READING_S)


async def test_board_readings_raise_events_once_per_crossing(bench: Bench, stream_server: StreamServer) -> None:
    await bench.start()
    started = now()
    # The supply sags below 11 V and hovers there: one low_supply; back above 11.5 V arms it
    # again.
    for volts in (10.5, 11.2, 10.8, 11.4):
        await _readings(bench, supply_v=volts)
    await bench.event(EventKind.LOW_SUPPLY, after=started)
    _, report = await bench.observer.wait_for(
        lambda m, r: isinstance(r, Telemetry) and r.supply_v == 11.4, timeout=4 * TELEMETRY_INTERVAL + ACK_DEADLINE,
        after=started, what="telemetry with the supply as read")
    await _readings(bench, supply_v=12.0)
    rearmed = now()
    await _readings(bench, supply_v=10.6)
    await bench.event(EventKind.LOW_SUPPLY, after=rearmed)
    # The die above 85 C, hovering between 80 and 85: one overheat.
    for celsius in (90.0, 84.0, 86.0, 81.0):
        await _readings(bench, temperature_c=celsius)
    await bench.event(EventKind.OVERHEAT, after=started)

    # The amplifier draws no current while a stream plays: amp_fault, then amp_recovered.
    sent = await bench.send(command("play", "c-amp", url=stream_server.url("/live.mp3")))
    await bench.event(EventKind.PLAY_STARTED, "cmd:c-amp", after=sent, timeout=STREAM_DEADLINE)
    faulty = now()
    await bench.set_readings(amp_fault=True)
    await bench.event(EventKind.AMP_FAULT, after=faulty, timeout=AMP_DEADLINE)
    await bench.observer.wait_for(lambda m, r: isinstance(r, Telemetry) and r.amplifier is AmpState.FAULT,
                                  timeout=4 * TELEMETRY_INTERVAL + ACK_DEADLINE, after=faulty,
                                  what="telemetry with the amplifier at fault")
    repaired = now()
    await bench.set_readings(amp_fault=False)
    await bench.event(EventKind.AMP_RECOVERED, after=repaired, timeout=AMP_DEADLINE)
    await asyncio.sleep(READING_S)

    board = (EventKind.LOW_SUPPLY, EventKind.OVERHEAT, EventKind.AMP_FAULT, EventKind.AMP_RECOVERED)
    events = [e for _, e in bench.observer.messages(Event, after=started) if e.kind in board]
    assert [e.kind for e in events] == [EventKind.LOW_SUPPLY, EventKind.LOW_SUPPLY, EventKind.OVERHEAT,
                                        EventKind.AMP_FAULT, EventKind.AMP_RECOVERED], events
    assert all(e.detail is None for e in events), events
    assert report.supply_v == 11.4
    await bench.finish()
