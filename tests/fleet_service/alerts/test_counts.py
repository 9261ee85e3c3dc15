"""What the rules over events count: boots from the boot events, underruns and stream bytes from
what the reports' counters grew by (all of them across a reboot), in ten-minute buckets and
months of the stations' calendar, added to the table in one statement, and kept in memory while
the database cannot take them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.alerts.counts import CountKind, EventCounter, bucket_start, month_start, over, prune
from fleet_service.alerts.models import ReceiverCount
from fleet_service.db import Base, session_scope
from fleet_service.ingest.events import ReceiverEventReported, TelemetryReported
from fleet_service.protocol.messages import AmpState, Event, EventKind, StreamState, Telemetry
from tests.support.fleet import provision_fleet

T0 = datetime(2026, 12, 4, 7, 0, tzinfo=timezone.utc)


def report(uptime: int, underruns: int, stream_bytes: int | None, seq: int = 0) -> Telemetry:
    return Telemetry(session=1, seq=seq, sent_at=int(T0.timestamp()), uptime_s=uptime, amplifier=AmpState.ON,
                     stream=StreamState.PLAYING, underruns=underruns, firmware="1.0.0", stream_bytes=stream_bytes)


def boot(at: datetime) -> ReceiverEventReported:
    return ReceiverEventReported("rx-0", Event(session=1, sent_at=int(at.timestamp()), kind=EventKind.BOOT,
                                               detail="power_on"), at)


def table(sessions: sessionmaker[Session]) -> dict[tuple[str, str, datetime], int]:
    with session_scope(sessions) as session:
        return {(c.receiver_id, c.kind, c.period_start): c.value for c in session.scalars(select(ReceiverCount))}


@pytest.fixture
def counter(session_factory) -> EventCounter:
    provision_fleet(session_factory, receivers=2, stations=1)
    return EventCounter(session_factory)


def test_counters_count_what_grew_between_reports_and_all_of_it_across_a_reboot(counter, session_factory):
    at = T0 + timedelta(minutes=3)
    counter.on_telemetry(TelemetryReported("rx-0", report(600, 4, 1_000_000), at))  # nothing to compare with
    counter.on_telemetry(TelemetryReported("rx-0", report(660, 7, 1_480_000), at + timedelta(minutes=1)))
    counter.on_event(boot(at + timedelta(minutes=2)))
    counter.on_telemetry(TelemetryReported("rx-0", report(30, 2, 90_000), at + timedelta(minutes=2)))  # rebooted
    counter.on_telemetry(TelemetryReported("rx-1", report(100, 50, None), at))
    counter.on_telemetry(TelemetryReported("rx-1", report(160, 50, None), at + timedelta(minutes=10)))  # no growth
    assert counter.flush() == 3
    bucket, month = bucket_start(at), month_start(at)
    assert bucket == T0 and month == datetime(2026, 11, 30, 17, 0, tzinfo=timezone.utc)  # 1 Dec, 00:00 in Hà Nội
    assert table(session_factory) == {("rx-0", "underruns", bucket): 3 + 2, ("rx-0", "stream_bytes", month): 570_000,
                                      ("rx-0", "boots", bucket): 1}
    counter.on_event(boot(at + timedelta(minutes=12)))  # the next bucket
    counter.on_event(boot(at + timedelta(minutes=4)))  # added to the row already written
    counter.flush()
    with session_scope(session_factory) as session:
        found = over(session, at + timedelta(minutes=15),
                     {CountKind.BOOTS: 3, CountKind.UNDERRUNS: 100, CountKind.STREAM_BYTES: 500_000})
    assert found == {"rx-0": {CountKind.BOOTS: 3, CountKind.STREAM_BYTES: 570_000}}
    with session_scope(session_factory) as session:  # an hour later the boots are out of the window
        assert over(session, at + timedelta(hours=1, minutes=25),
                    {CountKind.BOOTS: 1, CountKind.UNDERRUNS: 1, CountKind.STREAM_BYTES: 10**9}) == {}
        prune(session, at + timedelta(days=8))
    assert set(table(session_factory)) == {("rx-0", "stream_bytes", month)}


def test_a_month_of_the_stations_calendar_starts_at_their_midnight():
    assert month_start(datetime(2026, 12, 31, 16, 59, tzinfo=timezone.utc)) == datetime(2026, 11, 30, 17, 0,
                                                                                       tzinfo=timezone.utc)
    assert month_start(datetime(2026, 12, 31, 17, 0, tzinfo=timezone.utc)) == datetime(2026, 12, 31, 17, 0,
                                                                                      tzinfo=timezone.utc)


def test_counts_wait_in_memory_while_the_database_cannot_take_them(sqlite_url):
    from fleet_service.db import make_engine, make_sessionmaker
    from fleet_service.migrations import upgrade

    upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    provision_fleet(sessions, receivers=1, stations=1)
    counter = EventCounter(sessions)
    counter.on_event(boot(T0))
    with engine.begin() as connection:  # the table is gone, as a database that refuses writes
        connection.execute(text("ALTER TABLE alert_counts RENAME TO alert_counts_away"))
    with pytest.raises(Exception, match="alert_counts"):
        counter.flush()
    counter.on_event(boot(T0 + timedelta(minutes=1)))
    assert counter.pending() == 1
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE alert_counts_away RENAME TO alert_counts"))
    assert counter.flush() == 1
    assert table(sessions) == {("rx-0", "boots", T0): 2}
    assert Base.metadata.tables["alert_counts"] is not None
    engine.dispose()


def test_bytes_after_the_stations_midnight_on_the_first_count_for_the_new_month(counter, session_factory):
    before = datetime(2026, 12, 31, 16, 58, tzinfo=timezone.utc)  # 23:58 on 31 December in Hà Nội
    for minute, stream_bytes in enumerate((0, 100, 250, 600)):
        counter.on_telemetry(TelemetryReported("rx-0", report(60 + 60 * minute, 0, stream_bytes),
                                               before + timedelta(minutes=minute)))
    counter.flush()
    assert table(session_factory) == {("rx-0", "stream_bytes", datetime(2026, 11, 30, 17, 0, tzinfo=timezone.utc)): 100,
                                      ("rx-0", "stream_bytes", datetime(2026, 12, 31, 17, 0, tzinfo=timezone.utc)): 500}
