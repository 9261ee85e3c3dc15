"""PostgreSQL goes away while receivers keep reporting: ingest goes on, transitions wait in
order and reach the ledger, with their original times, once the database is back."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from fleet_service.migrations import upgrade
from fleet_service.protocol.messages import State, StateReason
from tests.fleet_service.ingest.test_ingest import receiver, state, telemetry
from tests.support.fleet import provision_fleet
from tests.support.postgres import ADMIN_DSN, postgres_available, scratch_database
from tests.support.service import ledger, running_service, service_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres


def set_database_open(name: str, open_: bool) -> None:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if open_ else "false"}')
        if not open_:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


async def test_ledger_survives_a_database_outage():
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
    with scratch_database() as url:
        upgrade(url)
        name = url.rsplit("/", 1)[1]
        async with running_service(service_settings(url)) as runtime:
            fleet = provision_fleet(runtime.sessions, receivers=1)
            ingest = runtime.ingest
            async with receiver(runtime, fleet, "rx-0") as rx:
                await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
                await wait_until(lambda: ingest.tracker.is_online("rx-0"), what="online")
                await ingest.flush()

                set_database_open(name, False)
                try:
                    await rx.publish("loa/v1/rx/rx-0/state", state(1, State.OFFLINE, StateReason.SHUTDOWN),
                                     qos=1, retain=True)
                    await wait_until(lambda: ingest.counters.ledger_failures >= 1, what="a failed ledger write")
                    assert ingest.ledger_backlog == 1
                    # Ingest is not held up by the database.
                    await rx.publish("loa/v1/rx/rx-0/state", state(2), qos=1, retain=True)
                    await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(2), qos=0)
                    await wait_until(lambda: "rx-0" in ingest.telemetry, what="telemetry during the outage")
                    assert ingest.ledger_backlog == 2
                    failed_at = ingest.tracker.last_heard("rx-0")
                finally:
                    set_database_open(name, True)
                await asyncio.wait_for(ingest.flush(), timeout=40)
            rows = ledger(runtime, "rx-0")
            assert [(r.state, r.session, r.start_cause) for r in rows] == [
                ("online", 1, "birth"), ("offline", 1, "shutdown"), ("online", 2, "birth")]
            # The times are those of the messages, not of the late write.
            assert rows[2].start_at <= failed_at
            assert ingest.counters.ledger_dropped == 0
