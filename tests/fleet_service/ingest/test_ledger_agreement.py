"""The live view (the connectivity tracker) and the uptime ledger never disagree, whatever a
message holds and whatever fails while it is handled, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.ingest.events import EventBus, ReceiverEventReported, TelemetryReported
from fleet_service.ingest.service import IngestService
from fleet_service.protocol.messages import Event, Telemetry
from fleet_service.uptime.models import ConnectivityInterval
from tests.fleet_service.ingest.test_ingest import state, telemetry
from tests.support.fleet import provision_fleet

TIMEOUT = timedelta(seconds=600)


def ledger_view(sessions: sessionmaker[Session]) -> dict[str, tuple[str, int | None]]:
    """Each receiver's open interval in the database: (state, session)."""
    with session_scope(sessions) as session:
        rows = session.execute(select(ConnectivityInterval.receiver_id, ConnectivityInterval.state,
                                      ConnectivityInterval.session).where(ConnectivityInterval.end_at.is_(None))).all()
    view: dict[str, tuple[str, int | None]] = {}
    for receiver_id, st, session_counter in rows:
        assert receiver_id not in view, f"{receiver_id} has two open intervals"
        view[receiver_id] = (st, session_counter)
    return view


def live_view(ingest: IngestService, receiver_ids: Iterable[str]) -> dict[str, tuple[str, int | None]]:
    """What the tracker holds of each receiver, in the ledger's terms."""
    view: dict[str, tuple[str, int | None]] = {}
    for receiver_id in receiver_ids:
        online = ingest.tracker.is_online(receiver_id)
        if online is not None:
            view[receiver_id] = ("online" if online else "offline", ingest.tracker.session_of(receiver_id))
    assert len(view) == len(ingest.tracker), "the tracker knows receivers the test does not"
    return view


def every_message_counted(ingest: IngestService) -> bool:
    c = ingest.counters
    return c.received == c.accepted + sum(c.dropped.values())


@pytest.fixture
async def ingest(session_factory: sessionmaker[Session]) -> AsyncIterator[IngestService]:
    provision_fleet(session_factory, receivers=1)
    service = IngestService(session_factory, EventBus(), inactivity_timeout=TIMEOUT, grace=timedelta(0), max_payload_bytes=4096)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_a_timestamp_beyond_any_clock_is_a_counted_drop_and_the_ledger_agrees(
        ingest: IngestService, session_factory: sessionmaker[Session]) -> None:
    """The receiver went silent, then a report with ``"ts": 10**400`` arrived. Before every
    number was bounded, it decoded (``ts`` had no upper bound) and the tracker took it as the
    receiver resuming (online); then ``message.sent_at - at.timestamp()`` raised OverflowError
    (an int too large for a float), out of ``handle`` into the MQTT loop, before the transition
    was queued: the live view said online, the ledger offline, for good. Now it is refused as
    ``schema`` at the edge and nothing changes."""
    t0 = utcnow()
    ingest.handle("loa/v1/rx/rx-0/state", state(1), at=t0)
    ingest.sweep(t0 + TIMEOUT + timedelta(seconds=1))  # silent: offline since t0
    ingest.handle("loa/v1/rx/rx-0/telemetry", telemetry(1, ts=10**400), at=t0 + TIMEOUT + timedelta(seconds=2))
    await ingest.flush()
    assert ingest.counters.dropped == {"schema": 1} and every_message_counted(ingest)
    assert live_view(ingest, ["rx-0"]) == ledger_view(session_factory) == {"rx-0": ("offline", 1)}

    # The next sound report brings it back, in both.
    ingest.handle("loa/v1/rx/rx-0/telemetry", telemetry(1, seq=1), at=t0 + TIMEOUT + timedelta(seconds=3))
    await ingest.flush()
    assert live_view(ingest, ["rx-0"]) == ledger_view(session_factory) == {"rx-0": ("online", 1)}


class FailingWriter:
    """A telemetry writer that fails on everything it is handed (a bug downstream of ingest)."""

    def __init__(self) -> None:
        self.handed = 0

    def submit(self, receiver_id: str, message: Telemetry | Event, received_at: object) -> None:
        self.handed += 1
        raise RuntimeError("telemetry writer is broken")


async def test_a_failing_subscriber_is_counted_and_the_ledger_still_agrees(
        ingest: IngestService, session_factory: sessionmaker[Session]) -> None:
    """A subscriber to ingest's events that fails (a bug downstream of ingest) neither escapes
    to the MQTT loop nor keeps the tracker's decision from the ledger: it is counted."""
    writer = FailingWriter()
    ingest.events.subscribe(TelemetryReported, lambda e: writer.submit(e.receiver_id, e.report, e.at))
    ingest.events.subscribe(ReceiverEventReported, lambda e: writer.submit(e.receiver_id, e.event, e.at))
    t0 = utcnow()
    ingest.handle("loa/v1/rx/rx-0/state", state(4), at=t0)
    ingest.sweep(t0 + TIMEOUT + timedelta(seconds=1))
    ingest.handle("loa/v1/rx/rx-0/telemetry", telemetry(4), at=t0 + TIMEOUT + timedelta(seconds=2))  # resumes
    ingest.handle("loa/v1/rx/rx-0/event", json.dumps({"v": 1, "session": 5, "ts": 1767225600, "kind": "boot"}).encode(),
                  at=t0 + TIMEOUT + timedelta(seconds=3))  # a newer session, its birth lost
    await ingest.flush()
    assert writer.handed == 2
    assert ingest.events.failures == {"TelemetryReported": 1, "ReceiverEventReported": 1}
    assert not ingest.counters.dropped and every_message_counted(ingest)
    assert live_view(ingest, ["rx-0"]) == ledger_view(session_factory) == {"rx-0": ("online", 5)}
