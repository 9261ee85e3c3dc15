"""The leader lease: one holder at a time, taken over when the holder stops renewing."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fleet_service.db import session_scope
from fleet_service.worker import service
from fleet_service.worker.service import LeaderLease, current_leader


def leader(sessions) -> str | None:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        return current_leader(session)


async def test_one_holder_at_a_time_and_a_clean_release_hands_over_at_once(session_factory):
    first, second = LeaderLease(session_factory, "worker-a"), LeaderLease(session_factory, "worker-b")
    assert await first.acquire()
    assert not await second.acquire()
    assert await first.acquire()  # renewing its own
    assert leader(session_factory) == "worker-a"
    await first.release()
    assert leader(session_factory) is None
    assert await second.acquire()
    assert not await first.acquire()


async def test_a_holder_that_stops_renewing_loses_the_lease_and_steps_down(session_factory, monkeypatch):
    monkeypatch.setattr(service, "LEASE_TTL", timedelta(seconds=1))
    monkeypatch.setattr(service, "RENEW_INTERVAL_S", 0.2)
    dead, alive = LeaderLease(session_factory, "worker-a"), LeaderLease(session_factory, "worker-b")
    assert await dead.acquire()
    assert not await alive.acquire()
    await asyncio.sleep(1.2)  # the holder died: nobody renews
    assert await alive.acquire()
    # The old holder, were it still running, notices at its next renewal and steps down.
    await asyncio.wait_for(dead.hold(), timeout=5)
    assert leader(session_factory) == "worker-b"


async def test_concurrent_acquirers_never_both_win(session_factory):
    leases = [LeaderLease(session_factory, f"worker-{i}") for i in range(6)]
    won = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert won.count(True) == 1


async def test_an_unreachable_database_means_no_lease():
    from fleet_service.db import make_engine, make_sessionmaker

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
    try:
        assert not await LeaderLease(make_sessionmaker(engine), "worker-a").acquire()
    finally:
        engine.dispose()
