"""The alert rules in a running worker (embedded broker, ingest, live state): a receiver that
loses its connection raises one incident, across a restart of the service, and it resolves
by itself once the receiver is back for the hold-down."""

from __future__ import annotations

import json

from sqlalchemy import select

from fleet_service.alerts.models import Incident, RuleOverride
from fleet_service.db import session_scope
from fleet_service.worker.status import ingest_status_here
from tests.support.fleet import provision_fleet
from tests.support.receiver_session import receiver_session
from tests.support.service import running_service, service_settings
from tests.support.waiting import wait_until


def incidents(sessions) -> list[Incident]:  # type: ignore[no-untyped-def]
    with session_scope(sessions) as session:
        found = list(session.scalars(select(Incident).order_by(Incident.id)))
        session.expunge_all()
    return found


async def test_a_lost_receiver_raises_one_incident_across_a_restart_and_it_clears_by_itself(sqlite_url):
    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=2, stations=1)
        with session_scope(runtime.sessions) as session:  # seconds, not the shipped minutes
            session.add(RuleOverride(region_key=0, kind="offline", pending_s=1, hold_s=3, group_wait_s=0,
                                     updated_by="test"))
        async with receiver_session(settings.mqtt_port, "rx-0", fleet.credentials["rx-0"], 1) as client:
            # The broker's Will for it, as when its 4G link drops.
            await client.publish("loa/v1/rx/rx-0/state", json.dumps(
                {"v": 1, "state": "offline", "session": 1, "reason": "lost"}), qos=1, retain=True)
            await wait_until(lambda: len(incidents(runtime.sessions)) == 1, timeout=15, what="an incident raised")
        incident, = incidents(runtime.sessions)
        assert (incident.kind, incident.receiver_id, incident.state) == ("offline", "rx-0", "open")
        assert incident.summary.startswith("Mất kết nối / Offline: rx-0 (Đài 0, Hùng Sơn)")
        status = ingest_status_here(runtime)
        assert status is not None and status.alerts_raised == 1 and status.alert_failures == 0
    async with running_service(settings) as runtime:  # restarted: nothing raised twice
        status = ingest_status_here(runtime)
        assert status is not None
        await wait_until(lambda: runtime.alerts is not None and runtime.alerts.turns >= 2, timeout=10,
                         what="two evaluations after the restart")
        assert [i.state for i in incidents(runtime.sessions)] == ["open"]
        async with receiver_session(settings.mqtt_port, "rx-0", fleet.credentials["rx-0"], 2):
            await wait_until(lambda: incidents(runtime.sessions)[0].state == "resolved", timeout=15,
                             what="resolved after the hold-down")
        incident, = incidents(runtime.sessions)
        assert incident.resolved_by is None and incident.open_key is None
