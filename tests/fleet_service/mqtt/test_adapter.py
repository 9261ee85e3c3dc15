"""The service's MQTT connection through broker outages: it keeps serving, retries with
backoff, reconnects, re-subscribes, and does not flip the fleet offline when it comes back."""

from __future__ import annotations

import asyncio

import paho.mqtt.publish as publish

from fleet_service.runtime import Runtime
from fleet_service.worker.composition import run_mqtt_side
from tests.fleet_service.ingest.test_ingest import state, telemetry
from tests.support.fleet import provision_fleet
from tests.support.mosquitto import mosquitto
from tests.support.ports import free_port
from tests.support.service import service_settings
from tests.support.waiting import wait_until


def send(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    publish.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=port)


async def test_broker_down_at_start_then_up_then_restarted(tmp_path, sqlite_url):
    port = free_port()
    settings = service_settings(sqlite_url, broker="external", mqtt_port=port, startup_grace_s=3,
                                inactivity_timeout_s=4)
    runtime = Runtime.from_settings(settings)
    provision_fleet(runtime.sessions, receivers=1)
    try:
        async with run_mqtt_side(runtime, wait_connected_s=1):
            adapter = runtime.mqtt
            assert not adapter.connected.is_set()  # no broker yet: the service runs anyway
            with mosquitto(tmp_path / "mq", port=port) as broker:
                await wait_until(adapter.connected.is_set, timeout=40, what="connection once the broker is up")
                await asyncio.to_thread(send, port, "loa/v1/rx/rx-0/state", state(1), True)
                await wait_until(lambda: runtime.ingest.tracker.is_online("rx-0"), what="birth")

                broker.stop()  # the broker goes away (persistence off: retained state is lost)
                await wait_until(lambda: not adapter.connected.is_set(), timeout=15, what="loss noticed")
                # Longer than the inactivity timeout, but the service heard nothing because it
                # could hear nothing: a broker outage must not flip the fleet offline.
                await asyncio.sleep(5)
            with mosquitto(tmp_path / "mq2", port=port):
                await wait_until(adapter.connected.is_set, timeout=40, what="reconnection")
                assert adapter.connections == 2
                # Re-subscribed: new messages arrive.
                await asyncio.to_thread(send, port, "loa/v1/rx/rx-0/telemetry", telemetry(1))
                await wait_until(lambda: "rx-0" in runtime.ingest.telemetry, what="telemetry after reconnect")
                assert runtime.ingest.tracker.is_online("rx-0") is True
                assert runtime.ingest.counters.transitions == 1  # the first birth, nothing else
    finally:
        runtime.close()
