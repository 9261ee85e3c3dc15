"""Ingest: every message from the receivers, decoded once, turned into live state, ledger
transitions and domain events (ingest.events) for whoever subscribes. A bad message is logged,
counted and dropped; nothing here may stop the loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.ingest.events import (
    CommandAcknowledged,
    EventBus,
    PlayStatusReported,
    ReceiverEventReported,
    ReceiverOffline,
    ReceiverOnline,
    ReceiverRemoved,
    TelemetryReported,
    UpdateReported,
)
from fleet_service.ingest.repository import IngestRepository, LiveStateRow
from fleet_service.protocol import DecodeError, decode
from fleet_service.protocol.codec import ReceiverMessage
from fleet_service.protocol.messages import Ack, PlayStatus, State, StateMessage, Telemetry, UpdateStatus
from fleet_service.uptime.models import Connectivity, TransitionCause
from fleet_service.uptime.service import record_transitions
from fleet_service.uptime.tracker import ConnectivityTracker, Transition

log = logging.getLogger(__name__)

# How often silence is checked: the inactivity timeout is minutes, a second is plenty.
SWEEP_INTERVAL_S = 1.0
# Transitions waiting for the database. While the database is down they wait here; beyond
# this bound (hours of a whole province flapping) they are dropped, counted and logged.
LEDGER_BACKLOG_MAX = 200_000
# Transitions written per transaction when there is a backlog.
LEDGER_BATCH_MAX = 500
# The writer waits this long after the first transition so that a burst (a reconnect storm)
# goes to the database in a few large transactions rather than many small ones.
LEDGER_COALESCE_S = 0.05
# The live state (each receiver's connectivity, when it was last heard, its latest telemetry and
# what it plays) is written this often, in one batch of the receivers that changed: what every
# API process reads lags a birth or a goodbye by up to this plus the write itself
# (docs/architecture.md gives the lag measured). A clean stop writes it all.
LIVE_STATE_FLUSH_S = 0.5
# A receiver whose only news is a report (its telemetry summary, when it was last heard) is
# written at most this often: a receiver reporting many times a second (a flood, a benchmark)
# costs one row per interval, not one per report. Its connectivity and what it plays go at the
# next LIVE_STATE_FLUSH_S. This is also what a crash can lose of "last heard" (docs/uptime.md).
LIVE_TELEMETRY_FLUSH_S = 5.0
LIVE_STATE_CHUNK = 1000
# How long an unknown receiver id is remembered as unknown before the registry is asked again.
UNKNOWN_RECHECK_S = 30.0
# At most one log line per drop reason per this many seconds: a broken receiver sending
# garbage every second must not flood the log.
DROP_LOG_INTERVAL_S = 10.0
# Drop reasons of ingest itself, beside the decoder's (protocol.codec.DropReason).
UNKNOWN_RECEIVER = "unknown_receiver"  # a receiver the registry does not have
INTERNAL = "internal"                  # handling the message failed unexpectedly (a bug): logged with its traceback


@dataclass(slots=True)
class LiveTelemetry:
    """What the live state keeps of a receiver's latest report: a few numbers, not the report
    (this is held for every receiver of the fleet)."""

    session: int
    seq: int
    received_at: datetime
    signal_dbm: int | None
    temperature_c: float | None
    supply_v: float | None
    amplifier: str
    stream: str
    firmware: str
    schedule_version: int | None
    # Receiver clock minus service clock, seconds (positive: the receiver runs ahead).
    clock_skew_s: float

    @classmethod
    def of(cls, report: Telemetry, at: datetime) -> LiveTelemetry:
        return cls(report.session, report.seq, at, report.signal_dbm, report.temperature_c, report.supply_v,
                   report.amplifier.value, report.stream.value, report.firmware, report.schedule_version,
                   report.sent_at - at.timestamp())


@dataclass(slots=True)
class LivePlay:
    """What the live state keeps of a receiver's play status: its values (enum values are
    shared strings), not the report."""

    stream: str
    priority: str | None
    source: str
    ref: str | None
    url: str | None
    volume: int
    why: str
    schedule_version: int | None
    reported_at: datetime

    @classmethod
    def of(cls, status: PlayStatus, at: datetime) -> LivePlay:
        return cls(status.stream.value, status.priority.value if status.priority else None, status.source.value,
                   status.ref, status.url, status.volume, status.why.value, status.schedule_version, at)

    def as_json(self) -> dict[str, Any]:
        """As the live state's ``playing`` column holds it (the fields of ingest.schemas.PlayingOut)."""
        return {"stream": self.stream, "priority": self.priority, "source": self.source, "ref": self.ref,
                "url": self.url, "volume": self.volume, "why": self.why, "schedule_version": self.schedule_version,
                "reported_at": self.reported_at.isoformat()}


@dataclass
class IngestCounters:
    received: int = 0
    accepted: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    transitions: int = 0
    telemetry_missed: int = 0  # gaps in a session's report numbers
    ledger_written: int = 0
    ledger_failures: int = 0
    ledger_dropped: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "dropped": dict(self.dropped),
            "transitions": self.transitions,
            "telemetry_missed": self.telemetry_missed,
            "ledger_written": self.ledger_written,
            "ledger_failures": self.ledger_failures,
            "ledger_dropped": self.ledger_dropped,
        }


class IngestService:
    def __init__(self, sessions: sessionmaker[Session], events: EventBus, *, inactivity_timeout: timedelta,
                 grace: timedelta, max_payload_bytes: int) -> None:
        self._sessions = sessions
        self.events = events
        self.max_payload_bytes = max_payload_bytes
        self.tracker = ConnectivityTracker(inactivity_timeout, grace)
        self.counters = IngestCounters()
        self.telemetry: dict[str, LiveTelemetry] = {}
        # What each receiver last said it plays (the retained .../play).
        self.playing: dict[str, LivePlay] = {}
        # The firmware a receiver's birth named, for a receiver not yet heard in telemetry.
        self._birth_firmware: dict[str, str] = {}
        # Its hardware family, as its birth named it (protocol 1.2); a few shared strings.
        self._hardware: dict[str, str] = {}
        self._station_of: dict[str, int | None] = {}
        self._unknown_until: dict[str, float] = {}
        self._awaiting_lookup: dict[str, list[tuple[ReceiverMessage, bool, datetime]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._backlog: deque[Transition] = deque()
        self._backlog_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_drop_log: dict[str, float] = {}
        # Receivers whose connectivity or play status changed, and those with only a new report.
        self._live_dirty: set[str] = set()
        self._live_reported: set[str] = set()
        self._live_reported_due = 0.0
        # The ledger's and the live state's writes, one after the other in one thread of their
        # own: on SQLite two writers wait for each other's lock in the driver's sleeps (up to
        # 100 ms each), which made a connect storm's live state seconds late; in one thread they
        # take turns with no wait between them.
        self._writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writes")
        # Set while no live-state write waits: the ledger's next batch waits for it, so that
        # what people see goes first in a storm (the ledger is read later, for availability).
        self._live_idle = asyncio.Event()
        self._live_idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry and the ledger's open intervals, then run the ledger writer and the
        silence sweep."""
        await asyncio.to_thread(self._load)
        self._tasks = [asyncio.create_task(self._ledger_writer(), name="ledger-writer"),
                       asyncio.create_task(self._sweeper(), name="silence-sweep"),
                       asyncio.create_task(self._live_state_writer(), name="live-state-writer")]

    async def stop(self) -> None:
        """Write what is pending (a bounded wait), then stop."""
        try:
            await asyncio.wait_for(self.flush(), timeout=10)
        except TimeoutError:
            log.error("stopping with %d ledger transitions unwritten", len(self._backlog))
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.write_live_state(everything=True), timeout=10)
        except TimeoutError:
            log.error("stopping without the live state of %d receivers written", len(self._live_dirty))
        self._writes.shutdown(wait=False)

    async def flush(self) -> None:
        """Wait until every transition so far is in the database."""
        while self._backlog or not self._idle.is_set():
            await asyncio.sleep(0.01)

    def _load(self) -> None:
        with session_scope(self._sessions) as session:
            repository = IngestRepository(session)
            self._station_of = repository.active_receivers()
            heard = repository.heard_at()
            for interval in repository.open_intervals():
                live_session, heard_at = heard.get(interval.receiver_id, (None, None))
                self.tracker.restore(interval.receiver_id, Connectivity(interval.state), interval.session,
                                     interval.start_at, heard_at if live_session == interval.session else None)

    # --- the hot path -------------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, *, retained: bool = False, at: datetime | None = None) -> None:
        """Decode one message and act on it. Never raises: every message ends up accepted or
        dropped with a reason (``received == accepted + sum(dropped)`` once lookups are done).
        Synchronous: the MQTT adapter calls it for every message; only a receiver not seen
        before costs a registry lookup, done in the background while its messages wait in
        order."""
        at = at or utcnow()
        self.counters.received += 1
        try:
            decoded = decode(topic, payload, max_bytes=self.max_payload_bytes)
        except DecodeError as exc:
            self._drop(exc.reason.value, str(exc))
            return
        except Exception:
            self._failed(f"decoding a message on {topic[:200]!r}")
            return
        receiver_id = decoded.topic.receiver_id
        if receiver_id in self._station_of:
            self._apply_one(receiver_id, decoded.message, retained, at)
            return
        waiting = self._awaiting_lookup.get(receiver_id)
        if waiting is not None:
            waiting.append((decoded.message, retained, at))
        elif self._unknown_until.get(receiver_id, 0.0) > time.monotonic():
            self._drop(UNKNOWN_RECEIVER, f"message from unregistered receiver {receiver_id!r} on {topic!r}")
        else:
            self._awaiting_lookup[receiver_id] = [(decoded.message, retained, at)]
            self._spawn(self._look_up(receiver_id))

    async def lookup_done(self) -> None:
        """Wait until no registry lookup is pending (for tests and orderly shutdown)."""
        while self._awaiting_lookup:
            await asyncio.sleep(0.01)

    def _apply_one(self, receiver_id: str, message: ReceiverMessage, retained: bool, at: datetime) -> None:
        """Apply a decoded message; a failure is counted as a drop, never raised to the MQTT
        loop. The tracker's transitions are queued before anything else can fail, so the live
        view and the ledger agree whatever happens after."""
        try:
            self._apply(receiver_id, message, retained, at)
        except Exception:
            self._failed(f"applying a {type(message).__name__} from {receiver_id!r}")
        else:
            self.counters.accepted += 1
        finally:
            if isinstance(message, (StateMessage, PlayStatus)):
                self._live_dirty.add(receiver_id)
            else:
                self._live_reported.add(receiver_id)

    def _apply(self, receiver_id: str, message: ReceiverMessage, retained: bool, at: datetime) -> None:
        if isinstance(message, StateMessage):
            self._enqueue(self.tracker.on_state(receiver_id, message, at, retained=retained))
            if message.state is State.ONLINE and self.tracker.is_online(receiver_id) \
                    and self.tracker.session_of(receiver_id) == message.session:
                if message.firmware is not None:
                    self._birth_firmware[receiver_id] = message.firmware
                if message.hardware is not None:
                    self._hardware[receiver_id] = message.hardware
                self.events.publish(ReceiverOnline(receiver_id, message.session, message.firmware, at,
                                                   message.hardware))
        elif isinstance(message, PlayStatus):
            # Retained: also what a receiver reported before it went offline; not activity then.
            if not retained:
                self._enqueue(self.tracker.on_activity(receiver_id, message.session, at))
            self.playing[receiver_id] = LivePlay.of(message, at)
            self.events.publish(PlayStatusReported(receiver_id, message, at, retained))
        elif isinstance(message, Ack):
            self._enqueue(self.tracker.on_activity(receiver_id, message.session, at))
            self.events.publish(CommandAcknowledged(receiver_id, message, at))
        elif isinstance(message, UpdateStatus):
            # Retained, like the play status: what it said before the service connected.
            if not retained:
                self._enqueue(self.tracker.on_activity(receiver_id, message.session, at))
            self.events.publish(UpdateReported(receiver_id, message, at, retained))
        elif isinstance(message, Telemetry):
            self._enqueue(self.tracker.on_activity(receiver_id, message.session, at))
            previous = self.telemetry.get(receiver_id)
            if previous is not None and previous.session == message.session and message.seq > previous.seq + 1:
                # Reports that never arrived: lost on the 4G link or dropped by a broker whose
                # queue for the service overflowed. Counted so that it shows.
                self.counters.telemetry_missed += message.seq - previous.seq - 1
            self.telemetry[receiver_id] = LiveTelemetry.of(message, at)
            self.events.publish(TelemetryReported(receiver_id, message, at))
        else:
            self._enqueue(self.tracker.on_activity(receiver_id, message.session, at))
            self.events.publish(ReceiverEventReported(receiver_id, message, at))

    @property
    def ledger_backlog(self) -> int:
        return len(self._backlog)

    def connection_lost(self) -> None:
        """Called by the MQTT adapter when it loses the broker."""
        self.tracker.hold()

    def begin_grace(self) -> None:
        """Called by the MQTT adapter each time it (re)subscribes."""
        self.tracker.begin_grace(utcnow())

    def receiver_revoked(self, receiver_id: str) -> None:
        now = utcnow()
        self._station_of.pop(receiver_id, None)
        self.events.publish(ReceiverRemoved(receiver_id, now))
        self._enqueue(self.tracker.on_revoked(receiver_id, now))

    def station_of(self, receiver_id: str) -> int | None:
        """The station the ledger records the receiver's next intervals under."""
        return self._station_of.get(receiver_id)

    def registry_changed(self, receiver_ids: list[str]) -> None:
        """Receivers moved to another station (or registered): their next ledger intervals
        carry the new station. Asked of the registry in the background, in one lookup."""
        known = [rid for rid in receiver_ids if rid in self._station_of]
        if known:
            self._spawn(self._refresh_stations(known))

    async def _refresh_stations(self, receiver_ids: list[str]) -> None:
        try:
            found = await asyncio.to_thread(self._stations_of, receiver_ids)
        except Exception:  # the database is down: the old stations stay until the next change
            log.exception("registry lookup failed for %d receivers", len(receiver_ids))
            return
        for rid in receiver_ids:
            if rid in found:
                self._station_of[rid] = found[rid]
            else:
                self._station_of.pop(rid, None)

    def _stations_of(self, receiver_ids: list[str]) -> dict[str, int | None]:
        with session_scope(self._sessions) as session:
            return IngestRepository(session).active_receivers(receiver_ids)

    def forget_unknown(self, receiver_id: str) -> None:
        """A receiver was (re)provisioned: ask the registry about it at its next message."""
        self._unknown_until.pop(receiver_id, None)

    # --- internals ----------------------------------------------------------------------------

    def _failed(self, what: str) -> None:
        """An unexpected exception while handling one message (called from its handler): a bug,
        logged with its traceback."""
        self._drop(INTERNAL, f"failed {what}", error=True)

    def _drop(self, reason: str, detail: str, *, error: bool = False) -> None:
        self.counters.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_drop_log.get(reason, -DROP_LOG_INTERVAL_S) >= DROP_LOG_INTERVAL_S:
            self._last_drop_log[reason] = now
            log.log(logging.ERROR if error else logging.WARNING, "dropped message (%s, %d so far): %s", reason,
                    self.counters.dropped[reason], detail, exc_info=error)

    async def _look_up(self, receiver_id: str) -> None:
        try:
            found = await asyncio.to_thread(self._lookup, receiver_id)
        except Exception:  # the database is down: drop these, ask again at the next message
            log.exception("registry lookup failed for %s", receiver_id)
            found = None
        waiting = self._awaiting_lookup.pop(receiver_id, [])
        if found is None:
            self._unknown_until[receiver_id] = time.monotonic() + UNKNOWN_RECHECK_S
            for _ in waiting:
                self._drop(UNKNOWN_RECEIVER, f"message from unregistered receiver {receiver_id!r}")
            return
        self._station_of[receiver_id] = found[0]
        for message, retained, at in waiting:
            self._apply_one(receiver_id, message, retained, at)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _lookup(self, receiver_id: str) -> tuple[int | None] | None:
        with session_scope(self._sessions) as session:
            return IngestRepository(session).active_receiver(receiver_id)

    def _enqueue(self, transitions: list[Transition]) -> None:
        if not transitions:
            return
        for transition in transitions:
            self._live_dirty.add(transition.receiver_id)
            if transition.state is Connectivity.OFFLINE:
                self.events.publish(ReceiverOffline(transition.receiver_id, TransitionCause(transition.cause),
                                                    transition.at))
            if len(self._backlog) >= LEDGER_BACKLOG_MAX:
                self.counters.ledger_dropped += 1
                log.error("ledger backlog full (%d): dropped %s", LEDGER_BACKLOG_MAX, transition)
                continue
            self._backlog.append(transition)
            self.counters.transitions += 1
        self._backlog_ready.set()

    async def _ledger_writer(self) -> None:
        delay = 1.0
        while True:
            await self._backlog_ready.wait()
            await asyncio.sleep(LEDGER_COALESCE_S)
            self._backlog_ready.clear()
            while self._backlog:
                self._idle.clear()
                await self._live_idle.wait()
                batch = [self._backlog[i] for i in range(min(LEDGER_BATCH_MAX, len(self._backlog)))]
                # Transitions a one-by-one write has settled (each its own transaction): never
                # written twice if the database goes away in the middle of it.
                settled = [0]
                try:
                    try:
                        await self._in_writes(self._write, batch)
                    except IntegrityError:
                        # Not an outage: some transition itself is refused (its receiver row is
                        # gone). Write the batch one by one and drop only what is refused.
                        await self._in_writes(self._write_one_by_one, batch, settled)
                except Exception as exc:
                    for _ in range(settled[0]):
                        self._backlog.popleft()
                    self.counters.ledger_written += settled[0]
                    self.counters.ledger_failures += 1
                    log.error("ledger write failed (%s); %d transitions wait, retrying in %.0f s",
                              exc.__class__.__name__, len(self._backlog), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 1.0
                for _ in batch:
                    self._backlog.popleft()
                self.counters.ledger_written += len(batch)
            self._idle.set()

    def _write(self, batch: list[Transition]) -> None:
        with session_scope(self._sessions) as session:
            record_transitions(session, batch, self._station_of)

    def _write_one_by_one(self, batch: list[Transition], settled: list[int]) -> None:
        for transition in batch[settled[0]:]:
            try:
                self._write([transition])
            except IntegrityError as exc:
                self.counters.ledger_dropped += 1
                log.error("ledger refused %s: %s", transition, exc.orig)
            settled[0] += 1

    async def _in_writes(self, write: Callable[..., None], *args: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writes, write, *args)

    async def _live_state_writer(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # Every LIVE_STATE_FLUSH_S from the last start, not after the last end: a long write
            # in a storm does not add its own length to the next receivers' wait.
            due = max(due + LIVE_STATE_FLUSH_S, loop.time())
            await asyncio.sleep(due - loop.time())
            await self.write_live_state()

    async def write_live_state(self, *, everything: bool = False) -> None:
        """Write the live state of the receivers that changed since the last write (those with
        only a new report every LIVE_TELEMETRY_FLUSH_S, or at once when ``everything``). The
        rows are taken here, in the event loop's thread, where the tracker changes; only the
        write goes to a worker thread."""
        if everything or time.monotonic() >= self._live_reported_due:
            self._live_dirty |= self._live_reported
            self._live_reported = set()
            self._live_reported_due = time.monotonic() + LIVE_TELEMETRY_FLUSH_S
        if not self._live_dirty:
            return
        changed, self._live_dirty = self._live_dirty, set()
        self._live_idle.clear()
        try:
            await self._write_live(changed)
        finally:
            self._live_idle.set()

    async def _write_live(self, changed: set[str]) -> None:
        now = utcnow()
        known = [rid for rid in changed if self.tracker.is_online(rid) is not None]
        # In chunks, each its own transaction: a whole fleet coming back at once is not one
        # statement of 10,000 parameter sets, whose memory the allocator would keep afterwards.
        for start in range(0, len(known), LIVE_STATE_CHUNK):
            rows = [self._live_row(rid, now) for rid in known[start:start + LIVE_STATE_CHUNK]]
            try:
                await self._in_writes(self._write_live_rows, rows)
            except Exception as exc:  # the database is down: these receivers wait for the next turn
                self._live_dirty.update(known[start:])
                log.warning("live state not written (%s); %d receivers wait", exc.__class__.__name__,
                            len(self._live_dirty))
                return

    def _live_row(self, rid: str, now: datetime) -> LiveStateRow:
        row = LiveStateRow(rid, bool(self.tracker.is_online(rid)), self.tracker.session_of(rid),
                           self.tracker.heard_at(rid), now, firmware=self._birth_firmware.get(rid),
                           hardware=self._hardware.get(rid))
        report = self.telemetry.get(rid)
        if report is not None:
            row.telemetry_at = report.received_at
            row.signal_dbm, row.temperature_c, row.supply_v = report.signal_dbm, report.temperature_c, report.supply_v
            row.amplifier, row.stream, row.firmware = report.amplifier, report.stream, report.firmware
            row.clock_skew_s, row.schedule_version = round(report.clock_skew_s, 1), report.schedule_version
        playing = self.playing.get(rid)
        if playing is not None:
            row.playing = playing.as_json()
            if playing.schedule_version is not None and (report is None or report.schedule_version is None):
                row.schedule_version = playing.schedule_version
        return row

    def _write_live_rows(self, rows: list[LiveStateRow]) -> None:
        with session_scope(self._sessions) as session:
            IngestRepository(session).write_live_state(rows)

    def sweep(self, now: datetime) -> None:
        """Mark the receivers silent since before ``now`` minus the inactivity timeout offline
        (every second by the sweeper; with a chosen ``now`` by tests)."""
        self._enqueue(self.tracker.sweep(now))

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                self.sweep(utcnow())
            except Exception:  # a bug; the next sweep tries again, silence is still noticed
                log.exception("silence sweep failed")
