"""The test bench: one receiver under test, its broker and the observer; the suite's timing;
and the checks that hold for every receiver lifetime."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fleet_service.protocol import Ack, AckStatus, Event, EventKind, PlayStatus, State, StateMessage, Telemetry
from fleet_service.protocol.messages import StateReason
from tests.conformance.driver import (
    CanCutLink,
    CountsCommands,
    InjectsUpdateFaults,
    ReceiverDriver,
    ReceiverSpec,
    SetsReadings,
    Unsupported,
)
from tests.conformance.wire import Observer, Seen, sessions_in_order

# -- timing -----------------------------------------------------------------------------------
# Short intervals keep the suite near a minute.
KEEPALIVE = 2
TELEMETRY_INTERVAL = 0.5
BACKOFF_CAP = 1.0
# From power-on (or a reboot's goodbye) to the birth: attach, TCP, CONNECT, CONNACK.
CONNECT_DEADLINE = 5.0
# From the abrupt end of a connection to the broker's Will. Mosquitto 2.0.11 is erratic here
# (measured with the simulator, keepalive 2 s): the Will came 3.7-4.4 s after the last packet
# of a client id's first connection, but 6.8-8.6 s after it once the same client id had
# connected before (after a reboot); once 10 s with keepalive 3 s. The delay is the broker's:
# nothing a receiver does shortens it, so the suite waits and does not judge it.
WILL_DEADLINE = 12.0
# From the end of an outage to the reconnect birth: a few capped backoff waits.
RECONNECT_DEADLINE = 3 * BACKOFF_CAP + CONNECT_DEADLINE
# From a birth to the boot event, and to the re-asserted birth after a late Will.
EVENT_DEADLINE = 3.0
# Slack for measurements in whole seconds (uptime, "off") and for the observer's delivery.
SLACK = 1.0

COMMAND_PAYLOAD = b'{"v":1}'

# -- commands (protocol 1.1) --------------------------------------------------------------------
# From publishing a command to its acknowledgement.
ACK_DEADLINE = 5.0
# From a play command to "done": the stream server answers at once and sends a burst.
STREAM_DEADLINE = 10.0
# From power-on to the first telemetry that says the clock is synced (SNTP on loopback).
SYNC_DEADLINE = 10.0
# How far a time the receiver stamps may be from the observer's clock once synced: whole
# seconds in "ts", and delivery.
STAMP_SLACK = 2.0
# Slots of test schedules are in the station's time of Asia/Ho_Chi_Minh (UTC+7, no DST).
STATION_TZ_MIN = 420
# Commands of the suite expire this long after they are sent.
COMMAND_LIFETIME = 600

# -- firmware updates (protocol 1.2) ------------------------------------------------------------
# A new version on trial has this long to connect and confirm itself (the field's default is
# minutes); a cut download is resumed after this pause, doubling with each failure in a row.
UPDATE_TRIAL_S = 4.0
UPDATE_RETRY_BASE = 0.2
# From an update command to its final state: a release of a few KiB from loopback, a reboot.
UPDATE_DEADLINE = 20.0


def now() -> float:
    return time.monotonic()


@dataclass
class Bench:
    impl: str
    driver: ReceiverDriver
    spec: ReceiverSpec
    observer: Observer
    broker: Any  # ProductionBroker or PermissiveBroker

    @property
    def receiver_id(self) -> str:
        return self.spec.receiver_id

    def topic(self, kind: str) -> str:
        return self.observer.rules.topic(self.receiver_id, kind)

    # -- actions ---------------------------------------------------------------------------

    async def start(self) -> tuple[Seen, StateMessage]:
        """Start the receiver; returns its first birth (checked as a boot birth)."""
        t = now()
        await self.driver.start(self.spec)
        seen, birth = await self.observer.wait_state(
            State.ONLINE, timeout=CONNECT_DEADLINE, after=t, what="birth after start")
        assert_boot_birth(birth)
        return seen, birth

    async def cut_link(self, seconds: float) -> None:
        if not isinstance(self.driver, CanCutLink):
            pytest.skip(f"the {self.impl} driver cannot cut the receiver's link (no cut_link())")
        try:
            await self.driver.cut_link(seconds)
        except Unsupported as exc:
            pytest.skip(f"the {self.impl} implementation cannot cut its link: {exc}")

    async def set_readings(self, **readings: Any) -> None:
        """What the board's sensors read from now on (SetsReadings)."""
        if not isinstance(self.driver, SetsReadings):
            pytest.skip(f"the {self.impl} driver cannot set the board's readings (no set_readings())")
        try:
            await self.driver.set_readings(**readings)
        except Unsupported as exc:
            pytest.skip(f"the {self.impl} implementation cannot set its board's readings: {exc}")

    def require_updates(self) -> None:
        """Skip unless the implementation carries out update commands (protocol 1.2)."""
        reason = getattr(self.driver, "updates_unsupported", None)
        if reason:
            pytest.skip(f"the {self.impl} implementation: {reason}")

    async def update_faults(self, **faults: Any) -> None:
        """Faults in the receiver's next update (InjectsUpdateFaults)."""
        self.require_updates()
        if not isinstance(self.driver, InjectsUpdateFaults):
            pytest.skip(f"the {self.impl} driver cannot inject faults into an update (no update_faults())")
        try:
            await self.driver.update_faults(**faults)
        except Unsupported as exc:
            pytest.skip(f"the {self.impl} implementation cannot inject faults into an update: {exc}")

    def require_command_count(self) -> None:
        if not isinstance(self.driver, CountsCommands):
            pytest.skip(f"the {self.impl} driver cannot tell which commands reached the receiver "
                        "(no commands_received())")

    def commands_counter(self) -> int:
        self.require_command_count()
        assert isinstance(self.driver, CountsCommands)
        try:
            return self.driver.commands_received()
        except Unsupported as exc:
            pytest.skip(f"the {self.impl} implementation cannot tell which commands reached it: {exc}")

    async def publish(self, kind: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        await asyncio.to_thread(self.observer.publish, self.topic(kind), payload, qos=qos, retain=retain)

    async def retained_state(self) -> StateMessage | None:
        return await asyncio.to_thread(self.observer.retained_state)

    async def assert_retained(self, expected: StateMessage, *, timeout: float) -> None:
        """A new subscriber gets ``expected`` as the retained state (within ``timeout``)."""
        deadline = now() + timeout
        while (retained := await self.retained_state()) != expected:
            if now() > deadline:
                raise AssertionError(f"retained state {retained}, expected {expected}")
            await asyncio.sleep(0.2)

    # -- commands (protocol 1.1) -----------------------------------------------------------

    async def send(self, command: dict[str, Any] | bytes) -> float:
        """Publish a command (a dict is sent as JSON) on the receiver's cmd topic, as the
        service does; returns the monotonic time just before, for the waits that follow."""
        t = now()
        payload = command if isinstance(command, bytes) else json.dumps(command).encode()
        await self.publish("cmd", payload)
        return t

    async def ack(self, command_id: str, status: AckStatus, *, after: float, timeout: float = ACK_DEADLINE,
                  duplicate: bool = False) -> Ack:
        """The receiver's acknowledgement of ``command_id`` with ``status`` (and ``dup`` as
        given), received after ``after``."""
        _, ack = await self.observer.wait_for(
            lambda m, a: isinstance(a, Ack) and a.command_id == command_id and a.status is status
            and a.duplicate == duplicate,
            timeout=timeout, after=after, what=f"ack {status.value}{' dup' if duplicate else ''} of {command_id}")
        return ack

    def acks(self, command_id: str, *, after: float = float("-inf")) -> list[Ack]:
        return [a for _, a in self.observer.messages(Ack, after=after) if a.command_id == command_id]

    async def play_status(self, where: Callable[[PlayStatus], bool], *, after: float, what: str,
                          timeout: float = ACK_DEADLINE) -> tuple[Seen, PlayStatus]:
        return await self.observer.wait_for(lambda m, p: isinstance(p, PlayStatus) and where(p),
                                            timeout=timeout, after=after, what=what)

    def latest_play_status(self) -> PlayStatus | None:
        statuses = self.observer.messages(PlayStatus)
        return statuses[-1][1] if statuses else None

    async def event(self, kind: EventKind, detail: str | None = None, *, after: float,
                    timeout: float = ACK_DEADLINE) -> tuple[Seen, Event]:
        return await self.observer.wait_for(
            lambda m, e: isinstance(e, Event) and e.kind is kind and (detail is None or e.detail == detail),
            timeout=timeout, after=after, what=f"{kind.value} event" + (f" {detail}" if detail else ""))

    def events(self, kind: EventKind, *, after: float = float("-inf")) -> list[Event]:
        return [e for _, e in self.observer.messages(Event, after=after) if e.kind is kind]

    async def synced(self, *, after: float, timeout: float = SYNC_DEADLINE) -> Telemetry:
        """The first telemetry report saying the clock is synced (``sync`` present)."""
        _, report = await self.observer.wait_for(
            lambda m, r: isinstance(r, Telemetry) and r.clock_synced_s is not None,
            timeout=timeout, after=after, what="telemetry of a synced clock (sync field)")
        return report

    async def start_synced(self) -> tuple[StateMessage, Telemetry]:
        """Start the receiver and wait until its clock is synced."""
        started = now()
        _, birth = await self.start()
        return birth, await self.synced(after=started)

    async def finish(self) -> None:
        """Stop the receiver and check the whole lifetime as the observer saw it."""
        await self.driver.stop()
        await asyncio.sleep(0.3)  # what was in flight arrives
        self.observer.assert_conformant()
        check_sessions(self.observer)

    # -- checks needing the receiver's cooperation ------------------------------------------

    async def assert_commands_reach_it(self, *, timeout: float) -> None:
        """The service's messages on the receiver's cmd topic reach it, each once. Commands
        are sent until the first one arrives (the receiver may still be subscribing), then
        three more are counted exactly."""
        counter = self.commands_counter
        first = counter()
        deadline = now() + timeout
        while counter() == first:
            if now() > deadline:
                raise AssertionError(f"no message on {self.topic('cmd')} reached the receiver within {timeout:g}s")
            await self.publish("cmd", COMMAND_PAYLOAD)
            until = now() + 0.25
            while counter() == first and now() < until:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # any command still on its way arrives
        base = counter()
        for _ in range(3):
            await self.publish("cmd", COMMAND_PAYLOAD)
        until = now() + 3.0
        while counter() < base + 3 and now() < until:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert counter() == base + 3, f"3 commands published, {counter() - base} received"


# -- building commands --------------------------------------------------------------------------


def command(op: str, command_id: str, *, lifetime: float = COMMAND_LIFETIME, **fields: Any) -> dict[str, Any]:
    """A command as the service sends it: issued now (host clock), expiring ``lifetime`` s later."""
    issued = int(time.time())
    return {"v": 1, "id": command_id, "op": op, "ts": issued, "exp": int(issued + lifetime), **fields}


def station_time(t: float) -> datetime:
    """Unix time ``t`` in the station's local time (STATION_TZ_MIN)."""
    return datetime.fromtimestamp(t, timezone(timedelta(minutes=STATION_TZ_MIN)))


def slot(slot_id: str, start: float, end: float, url: str, **fields: Any) -> dict[str, Any]:
    """A schedule slot from ``start`` to ``end`` (Unix times, the same station day), every day."""
    s, e = station_time(start), station_time(end)
    assert s.date() == e.date(), "a slot of the suite must not cross the station's midnight"
    return {"id": slot_id, "s": s.strftime("%H:%M:%S"), "e": e.strftime("%H:%M:%S"), "d": 127, "u": url, **fields}


async def clear_of_midnight(seconds: float) -> None:
    """Wait, if need be, until the next ``seconds`` do not cross the station's midnight (slot
    times are within one day)."""
    t = time.time()
    if station_time(t).date() != station_time(t + seconds).date():
        await asyncio.sleep(86400 - (t + STATION_TZ_MIN * 60) % 86400 + 0.5)


def wall(seen_t: float) -> float:
    """The wall-clock time of a monotonic ``Seen.t``."""
    return time.time() - (now() - seen_t)


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


# -- checks on decoded messages -----------------------------------------------------------------


def assert_boot_birth(birth: StateMessage) -> None:
    assert birth.state is State.ONLINE
    assert birth.reason is StateReason.BOOT, f"first birth after power-on must say boot: {birth}"
    assert birth.firmware, f"a birth names the firmware version: {birth}"
    assert birth.offline_s is None, f"'off' belongs to reconnect births only: {birth}"


def assert_reconnect_birth(birth: StateMessage, previous_session: int, *, outage: float) -> None:
    """A birth after an outage that began ``outage`` seconds before the birth was seen."""
    assert birth.state is State.ONLINE
    assert birth.session > previous_session, f"session {birth.session} after {previous_session}: never reused"
    assert birth.reason is StateReason.RECONNECT, f"a birth without a reboot must say reconnect: {birth}"
    assert birth.firmware, f"a birth names the firmware version: {birth}"
    assert birth.offline_s is not None, f"a reconnect birth says how long it was away ('off'): {birth}"
    assert 0 <= birth.offline_s <= outage + KEEPALIVE + SLACK, (
        f"'off' = {birth.offline_s} s, but the outage began {outage:.1f} s before this birth "
        f"(+ keepalive {KEEPALIVE} s at most since the broker was last heard)")


def check_telemetry(reports: list[tuple[Seen, Telemetry]], birth: StateMessage, *, booted_at: float | None = None,
                    cadence: bool = False) -> None:
    """Reports of one session: its session, increasing seq, the birth's firmware, an uptime
    that runs with the clock (from ``booted_at`` if given); with ``cadence``, sent about every
    TELEMETRY_INTERVAL."""
    assert reports, "no telemetry"
    seqs = [r.seq for _, r in reports]
    assert all(b > a for a, b in zip(seqs, seqs[1:], strict=False)), f"seq must increase within a session: {seqs}"
    for _, r in reports:
        assert r.session == birth.session
        assert r.firmware == birth.firmware, f"telemetry fw {r.firmware!r}, birth fw {birth.firmware!r}"
    uptimes = [r.uptime_s for _, r in reports]
    assert uptimes == sorted(uptimes), f"uptime must not go back within a session: {uptimes}"
    (t0, first), (t1, last) = (reports[0][0].t, reports[0][1]), (reports[-1][0].t, reports[-1][1])
    assert abs((last.uptime_s - first.uptime_s) - (t1 - t0)) <= SLACK + 0.5, (
        f"uptime went from {first.uptime_s} to {last.uptime_s} s in {t1 - t0:.1f} s")
    if booted_at is not None:
        assert first.uptime_s <= t0 - booted_at + SLACK, (
            f"uptime {first.uptime_s} s in the first report, {t0 - booted_at:.1f} s after power-on")
    if cadence:
        gaps = [b[0].t - a[0].t for a, b in zip(reports, reports[1:], strict=False)][1:]  # the first may come at once
        assert gaps, "too few reports to measure the interval"
        mean = statistics.fmean(gaps)
        assert 0.7 * TELEMETRY_INTERVAL <= mean <= 1.4 * TELEMETRY_INTERVAL, (
            f"telemetry every {mean:.2f} s on average, configured {TELEMETRY_INTERVAL} s (gaps {gaps})")
        assert max(gaps) <= 3 * TELEMETRY_INTERVAL, f"a telemetry gap of {max(gaps):.2f} s (gaps {gaps})"


def check_sessions(observer: Observer) -> None:
    """Invariants of a whole recorded lifetime:

    * sessions of births only grow (a counter is never reused);
    * telemetry and events carry the session of the latest birth, so a session's first message
      is its birth;
    * nothing of a session follows its goodbye, and no Will follows a goodbye;
    * a boot event belongs to a session whose birth said boot.
    """
    seen = observer.messages()
    births = sessions_in_order(seen)
    assert all(b > a for a, b in zip(births, births[1:], strict=False)), f"sessions of births in order: {births}"
    current: StateMessage | None = None
    said_goodbye: set[int] = set()
    for m, message in seen:
        if isinstance(message, StateMessage):
            if message.state is State.ONLINE:
                assert message.session not in said_goodbye, f"birth of session {message.session} after its goodbye"
                current = message
            elif message.reason is StateReason.SHUTDOWN:
                said_goodbye.add(message.session)
            elif message.reason is StateReason.LOST:
                assert message.session not in said_goodbye, (
                    f"Will of session {message.session} after its goodbye: the receiver did not DISCONNECT")
            continue
        assert current is not None, f"{m.describe()} before any birth"
        assert message.session == current.session, (
            f"{m.describe()} carries session {message.session}, the latest birth is session {current.session}")
        assert message.session not in said_goodbye, f"{m.describe()} after the goodbye of its session"
        if isinstance(message, Event) and message.kind is EventKind.BOOT:
            assert current.reason is StateReason.BOOT, (
                f"boot event in session {current.session}, whose birth said {current.reason}")


def nothing_between(observer: Observer, after: float, before: float, *, but: Seen | None = None) -> list[Seen]:
    """What the receiver published in [after, before), apart from ``but``."""
    return [m for m in observer.seen(after=after, before=before) if m != but]
