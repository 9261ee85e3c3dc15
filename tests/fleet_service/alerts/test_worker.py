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
        # The count follows the turn's commit, which the incident above was read from.
        await wait_until(lambda: (status := ingest_status_here(runtime)) is not None and status.alerts_raised == 1,
                         timeout=5, what="the raised incident counted")
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


async def test_a_receiver_that_keeps_rebooting_and_stuttering_raises_what_was_counted(sqlite_url):
    import time

    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=1, stations=1)
        with session_scope(runtime.sessions) as session:
            session.add(RuleOverride(region_key=0, kind="underruns", threshold=5, updated_by="test"))
            session.add(RuleOverride(region_key=0, kind="data_budget", threshold=1, updated_by="test"))  # 1 MB
        base = "loa/v1/rx/rx-0"
        for session_no in (1, 2, 3):  # three boots, each with its boot event and reports
            async with receiver_session(settings.mqtt_port, "rx-0", fleet.credentials["rx-0"], session_no) as client:
                await client.publish(f"{base}/event", json.dumps(
                    {"v": 1, "session": session_no, "ts": int(time.time()), "kind": "boot", "detail": "brownout"}), qos=1)
                for seq, (uptime, underruns, stream_bytes) in enumerate(((5, 0, 0), (65, 4, 400_000),
                                                                        (125, 9, 900_000))):
                    await client.publish(f"{base}/telemetry", json.dumps(
                        {"v": 1, "session": session_no, "seq": seq, "ts": int(time.time()), "up": uptime,
                         "amp": "on", "st": "playing", "urun": underruns, "sb": stream_bytes, "fw": "1.0.0"}), qos=1)
        # Boots counted from the events; underruns and bytes from what the counters grew by
        # between reports, all of a counter across a reboot (each boot's 9 underruns, 0.9 MB).
        await wait_until(lambda: counted(runtime.sessions) == {"boots": 3, "underruns": 27, "stream_bytes": 2_700_000},
                         timeout=15, what="the boots, underruns and stream bytes counted")
        await wait_until(lambda: {i.kind for i in incidents(runtime.sessions)} >= {"reboots", "underruns", "data_budget"},
                         timeout=15, what="the counted rules' incidents")
        found = {i.kind: i for i in incidents(runtime.sessions) if i.kind != "offline"}
        assert sorted(found) == ["data_budget", "reboots", "underruns"]
        assert found["reboots"].summary.startswith("Khởi động lại nhiều lần / Repeated reboots: rx-0 (Đài 0, Hùng Sơn)")


def counted(sessions) -> dict[str, int]:  # type: ignore[no-untyped-def]
    from fleet_service.alerts.models import ReceiverCount

    totals: dict[str, int] = {}
    with session_scope(sessions) as session:
        for row in session.scalars(select(ReceiverCount)):
            totals[row.kind] = totals.get(row.kind, 0) + row.value
    return totals


async def test_a_rule_edited_applies_at_once_to_receivers_whose_state_did_not_change(sqlite_url):
    import time

    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=1, stations=1)
        async with receiver_session(settings.mqtt_port, "rx-0", fleet.credentials["rx-0"], 1) as client:
            await client.publish("loa/v1/rx/rx-0/telemetry", json.dumps(
                {"v": 1, "session": 1, "seq": 0, "ts": int(time.time()), "up": 60, "amp": "on", "st": "idle",
                 "temp": 65.0, "fw": "1.0.0"}), qos=1)
            assert runtime.alerts is not None
            turns = runtime.alerts.turns
            await wait_until(lambda: runtime.alerts is not None and runtime.alerts.turns >= turns + 3, timeout=20,
                             what="turns over the report")
            assert incidents(runtime.sessions) == []  # 65 °C is below the default 70 °C
            with session_scope(runtime.sessions) as session:  # this district's cabinets: 60 °C, at once
                session.add(RuleOverride(region_key=0, kind="overheat", threshold=60.0, pending_s=0, updated_by="test"))
            await wait_until(lambda: [i.kind for i in incidents(runtime.sessions)] == ["overheat"], timeout=20,
                             what="the edited rule applied to a receiver that reported nothing new")
