"""The live state in the database: written within about a second, read back at a restart."""

from __future__ import annotations

import time

from sqlalchemy import select

from fleet_service.db import session_scope
from fleet_service.protocol.messages import State, StateReason
from fleet_service.uptime.models import ReceiverLiveState
from tests.fleet_service.ingest.test_ingest import receiver, state, telemetry
from tests.support.fleet import provision_fleet
from tests.support.service import running_service, service_settings
from tests.support.waiting import wait_until


def live_rows(runtime) -> dict[str, ReceiverLiveState]:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        return {row.receiver_id: row for row in session.scalars(select(ReceiverLiveState))}


async def test_the_live_state_follows_within_a_second_and_survives_a_restart(sqlite_url):
    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=2)
        async with receiver(runtime, fleet, "rx-0") as rx:
            await rx.publish("loa/v1/rx/rx-0/state", state(7), qos=1, retain=True)
            await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(7), qos=1)
            await wait_until(lambda: "rx-0" in runtime.ingest.telemetry, what="the report")
            heard = runtime.ingest.tracker.heard_at("rx-0")
            seen = time.monotonic()
            # A flush between the birth and the report may have written the birth's time first.
            await wait_until(lambda: (rows := live_rows(runtime)).get("rx-0") is not None
                             and rows["rx-0"].heard_at == heard, timeout=5, what="the live state of the report")
            assert time.monotonic() - seen < 2.5  # written within the flush interval, with slack
            row = live_rows(runtime)["rx-0"]
            assert (row.online, row.session, row.heard_at) == (True, 7, heard)
            assert "rx-1" not in live_rows(runtime)  # never heard: nothing to say
            # The service stops while the receiver is online...
    async with running_service(settings) as runtime:
        # ...and what it last heard of the session is back in the tracker after its restart.
        assert runtime.ingest.tracker.heard_at("rx-0") == heard
        async with receiver(runtime, fleet, "rx-0") as rx:
            await rx.publish("loa/v1/rx/rx-0/state", state(7, State.OFFLINE, StateReason.SHUTDOWN), qos=1,
                             retain=True)
            await wait_until(lambda: not live_rows(runtime)["rx-0"].online, timeout=5, what="offline in the table")
