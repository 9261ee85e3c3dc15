"""What the rules over events count (docs/alerts.md, "Rules over events"): each receiver's
boots and stream underruns per ten minutes, and its stream bytes per month of the stations'
calendar (Asia/Ho_Chi_Minh), in ``alert_counts``.

``EventCounter`` subscribes to ingest's domain events in the leading worker (which alone
ingests): a boot is its ``boot`` event; underruns and stream bytes are what a report's counters
(since boot) grew by since the receiver's previous report, all of the counter when it rebooted
in between (its uptime went back). What is counted is added up in memory and added to the table
every FLUSH_INTERVAL_S by one statement; a write that fails is kept for the next. What a
process holds when it is killed is lost (at most that interval's counts), and so is the first
report's growth after a start, which has nothing to be compared with: a minute's worth at the
receivers' default report interval."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import cast

from sqlalchemy import Insert, Table, delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.alerts.models import ReceiverCount
from fleet_service.db import session_scope, upsert
from fleet_service.ingest.events import ReceiverEventReported, TelemetryReported
from fleet_service.protocol.messages import EventKind
from fleet_service.timefmt import LOCAL_ZONE

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 5.0
# Boots and underruns are counted in buckets this long; the rules look at the last hour of them.
BUCKET = timedelta(minutes=10)
WINDOW = timedelta(hours=1)
# Buckets are kept this long, months (stream bytes) for a year.
KEEP_BUCKETS = timedelta(days=7)
KEEP_MONTHS = timedelta(days=400)


class CountKind(StrEnum):
    BOOTS = "boots"
    UNDERRUNS = "underruns"
    STREAM_BYTES = "stream_bytes"  # per month


def bucket_start(at: datetime) -> datetime:
    """The ten-minute bucket ``at`` falls in (UTC)."""
    seconds = int(BUCKET.total_seconds())
    return datetime.fromtimestamp(int(at.timestamp()) // seconds * seconds, at.tzinfo)


def month_start(at: datetime) -> datetime:
    """The start of the stations' calendar month ``at`` falls in (local midnight on the 1st, in UTC)."""
    local = at.astimezone(LOCAL_ZONE).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(at.tzinfo)


def window_start(now: datetime) -> datetime:
    """The first bucket of the last hour: the window is an hour to ten minutes."""
    return bucket_start(now - WINDOW)


class EventCounter:
    """The subscriber: ``on_event`` and ``on_telemetry`` run in the event loop (a dictionary
    update each), ``flush`` in a worker thread."""

    def __init__(self, sessions: sessionmaker[Session], *, interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, datetime], int] = {}
        # Each receiver's counters in its last report: (uptime, underruns, stream bytes).
        self._last: dict[str, tuple[int, int, int | None]] = {}
        # The bucket and the month reports fall in, until they end (reports come in time order).
        self._bucket: tuple[datetime, datetime] | None = None
        self._month: tuple[datetime, datetime] | None = None
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.failures = 0

    def _add(self, receiver_id: str, kind: CountKind, period: datetime, value: int) -> None:
        if value <= 0:
            return
        key = (receiver_id, kind.value, period)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + value

    def _bucket_of(self, at: datetime) -> datetime:
        span = self._bucket
        if span is None or not span[0] <= at < span[1]:
            start = bucket_start(at)
            span = self._bucket = (start, start + BUCKET)
        return span[0]

    def _month_of(self, at: datetime) -> datetime:
        span = self._month
        if span is None or not span[0] <= at < span[1]:
            start = month_start(at)
            span = self._month = (start, month_start(start + timedelta(days=32)))
        return span[0]

    def on_event(self, event: ReceiverEventReported) -> None:
        if event.event.kind is EventKind.BOOT:
            self._add(event.receiver_id, CountKind.BOOTS, self._bucket_of(event.at), 1)

    def on_telemetry(self, event: TelemetryReported) -> None:
        report, rid = event.report, event.receiver_id
        previous = self._last.get(rid)
        self._last[rid] = (report.uptime_s, report.underruns, report.stream_bytes)
        if previous is None:
            return  # nothing to compare it with: what it counted before is not known to be new
        uptime, underruns, stream_bytes = previous
        rebooted = report.uptime_s < uptime
        self._add(rid, CountKind.UNDERRUNS, self._bucket_of(event.at),
                  report.underruns if rebooted or report.underruns < underruns else report.underruns - underruns)
        if report.stream_bytes is not None:
            grew = (report.stream_bytes if rebooted or stream_bytes is None or report.stream_bytes < stream_bytes
                    else report.stream_bytes - stream_bytes)
            self._add(rid, CountKind.STREAM_BYTES, self._month_of(event.at), grew)

    def forget(self, receiver_id: str) -> None:
        self._last.pop(receiver_id, None)

    def pending(self) -> int:
        with self._lock:
            return len(self._counts)

    def flush(self) -> int:
        """Adds what was counted to the table; on failure keeps it for the next flush and raises."""
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return 0
        try:
            with session_scope(self._sessions) as session:
                add_counts(session, [(rid, kind, period, value) for (rid, kind, period), value in counts.items()])
        except BaseException:
            with self._lock:
                for key, value in counts.items():
                    self._counts[key] = self._counts.get(key, 0) + value
            raise
        self.flushes += 1
        return len(counts)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-counts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.to_thread(self.flush)
        except Exception:
            log.exception("the last event counts could not be written; %d are lost", self.pending())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # the database is down: kept, and written with the next flush
                self.failures += 1
                log.exception("writing event counts failed; kept for the next attempt (%d)", self.pending())


@functools.cache
def _add_statement(dialect: str) -> Insert:
    """Adds to the row, creating it the first time."""
    return upsert(dialect, cast(Table, ReceiverCount.__table__), ("receiver_id", "kind", "period_start"),
                  lambda stored, new: {"value": stored.value + new.value})


def add_counts(session: Session, counts: Iterable[tuple[str, str, datetime, int]]) -> None:
    # In one order in every process: two writers on PostgreSQL lock rows in one order.
    rows = sorted(counts)
    if rows:
        session.execute(_add_statement(session.get_bind().dialect.name),
                        [{"receiver_id": r, "kind": k, "period_start": p, "value": v} for r, k, p, v in rows])


def over(session: Session, now: datetime, least: dict[CountKind, float]) -> dict[str, dict[CountKind, int]]:
    """Each receiver's boots and underruns in the last hour and stream bytes this month, for
    those with at least ``least`` of one of them (the rules' loosest thresholds)."""
    found: dict[str, dict[CountKind, int]] = {}
    c = ReceiverCount
    since = window_start(now)
    for kind in (CountKind.BOOTS, CountKind.UNDERRUNS):
        query = (select(c.receiver_id, func.sum(c.value)).where(c.kind == kind.value, c.period_start >= since)
                 .group_by(c.receiver_id).having(func.sum(c.value) >= least[kind]))
        for rid, total in session.execute(query):
            found.setdefault(rid, {})[kind] = int(total)
    query = select(c.receiver_id, c.value).where(c.kind == CountKind.STREAM_BYTES.value,
                                                 c.period_start == month_start(now),
                                                 c.value >= least[CountKind.STREAM_BYTES])
    for rid, total in session.execute(query):
        found.setdefault(rid, {})[CountKind.STREAM_BYTES] = int(total)
    return found


def prune(session: Session, now: datetime) -> None:
    """Deletes the periods no rule looks at any more."""
    c = ReceiverCount
    session.execute(delete(c).where(or_(
        (c.kind != CountKind.STREAM_BYTES.value) & (c.period_start < now - KEEP_BUCKETS),
        (c.kind == CountKind.STREAM_BYTES.value) & (c.period_start < now - KEEP_MONTHS))))
