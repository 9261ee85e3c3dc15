"""The service on production Mosquitto: it manages receiver logins through dynamic security,
survives its own restart without flipping the fleet offline, and revokes without restarts."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from tests.fleet_service.ingest.test_ingest import state, telemetry
from tests.support.fleet import provision_fleet
from tests.support.mosquitto_production import production_mosquitto
from tests.support.service import ledger, mosquitto_settings, outbox_drained, running_service
from tests.support.waiting import wait_until


def rx_client(broker, rid: str, password: str, **kwargs) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, username=rid, password=password, identifier=rid, timeout=5,
                          **kwargs)


async def test_service_restart_keeps_fleet_online_and_reconciles(tmp_path, sqlite_url):
    with production_mosquitto(tmp_path / "mq") as broker:
        settings = mosquitto_settings(sqlite_url, broker, startup_grace_s=2, inactivity_timeout_s=600)
        async with running_service(settings) as runtime:
            fleet = provision_fleet(runtime.sessions, receivers=2)
            for rid, password in fleet.credentials.items():
                await asyncio.to_thread(runtime.broker_accounts.add_receiver, rid, password)
        # The service is down now; the receivers connect and report meanwhile.
        will = aiomqtt.Will("loa/v1/rx/rx-1/state", state(1, "offline", "lost"), qos=1, retain=True)
        async with rx_client(broker, "rx-0", fleet.credentials["rx-0"]) as rx0, \
                rx_client(broker, "rx-1", fleet.credentials["rx-1"], will=will) as rx1:
            await rx0.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
            await rx1.publish("loa/v1/rx/rx-1/state", state(1), qos=1, retain=True)
            async with running_service(settings) as runtime:
                ingest = runtime.ingest
                await wait_until(lambda: ingest.tracker.is_online("rx-0") and ingest.tracker.is_online("rx-1"),
                                 what="both online from retained state")
            # Restart the service while both stay connected and report.
            async with running_service(settings) as runtime:
                ingest = runtime.ingest
                await wait_until(lambda: len(ingest.tracker) == 2, what="retained state after restart")
                await rx0.publish("loa/v1/rx/rx-0/telemetry", telemetry(1), qos=0)
                await wait_until(lambda: "rx-0" in ingest.telemetry, what="telemetry")
                await asyncio.sleep(settings.startup_grace_s + 1.5)  # past the grace period
                assert ingest.tracker.counts() == (2, 0)
                await ingest.flush()
                for rid in ("rx-0", "rx-1"):
                    assert [r.state for r in ledger(runtime, rid)] == ["online"], rid

                # Revoking rx-1 drops its connection at once, no restart: its Will arrives.
                with session_scope(runtime.sessions) as session:
                    registry.revoke(session, "rx-1")
                await asyncio.to_thread(runtime.broker_accounts.remove_receiver, "rx-1")
                await wait_until(lambda: ingest.tracker.is_online("rx-1") is False, what="rx-1 offline")
                await ingest.flush()
                assert [r.state for r in ledger(runtime, "rx-1")] == ["online", "offline"]
                assert ingest.tracker.is_online("rx-0") is True
            with pytest.raises(aiomqtt.MqttError):
                async with rx_client(broker, "rx-1", fleet.credentials["rx-1"]):
                    pass


async def test_a_power_loss_inside_the_services_outage_starts_no_earlier_than_the_last_message_heard(
        tmp_path, sqlite_url):
    """The receiver is heard for a while, the service stops, the receiver loses power and comes
    back (a power-on birth carries no ``off``), then the service starts again. The outage is
    recorded from the last message the service heard, not from the start of the online interval
    (which would turn the time the service was still hearing it into downtime)."""
    with production_mosquitto(tmp_path / "mq") as broker:
        settings = mosquitto_settings(sqlite_url, broker, startup_grace_s=2, inactivity_timeout_s=600)
        async with running_service(settings) as runtime:
            fleet = provision_fleet(runtime.sessions, receivers=1)  # its login reaches Mosquitto by the outbox
            await wait_until(lambda: outbox_drained(runtime), what="the login on Mosquitto")
            async with rx_client(broker, "rx-0", fleet.credentials["rx-0"]) as rx:
                await rx.publish("loa/v1/rx/rx-0/state", state(1), qos=1, retain=True)
                ingest = runtime.ingest
                await wait_until(lambda: ingest.tracker.is_online("rx-0"), what="rx-0 online")
                for seq in range(3):  # heard for a while after its birth
                    await asyncio.sleep(1.0)
                    await rx.publish("loa/v1/rx/rx-0/telemetry", telemetry(1, seq), qos=1)
                await wait_until(lambda: ingest.counters.accepted >= 4, what="the reports")
                last_heard = ingest.tracker.last_heard("rx-0")  # the last report
        # The service is down. The receiver loses power (its link just dies) and boots again.
        assert last_heard is not None
        async with rx_client(broker, "rx-0", fleet.credentials["rx-0"]) as rx:
            await rx.publish("loa/v1/rx/rx-0/state", state(2), qos=1, retain=True)
            async with running_service(settings) as runtime:
                await wait_until(lambda: runtime.ingest.tracker.session_of("rx-0") == 2, what="the new session")
                await runtime.ingest.flush()
                intervals = ledger(runtime, "rx-0")
    assert [(i.state, i.session) for i in intervals] == [("online", 1), ("offline", 1), ("online", 2)]
    online, offline, _ = intervals
    assert online.end_at == offline.start_at
    # Seconds the service heard the receiver stay uptime; before, the outage began at the birth.
    assert abs((offline.start_at - last_heard).total_seconds()) < 0.01
    assert (online.end_at - online.start_at).total_seconds() >= 2.5
