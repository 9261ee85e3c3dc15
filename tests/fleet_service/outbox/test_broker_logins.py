"""Receiver logins through the outbox against a real broker: a new password given while
Mosquitto is down is kept, shown, and reaches the broker by itself once it is back."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import httpx

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.db import session_scope
from tests.support.fleet import provision_fleet
from tests.support.mosquitto_production import production_mosquitto
from tests.support.service import mosquitto_settings, running_service


async def logs_in(host: str, port: int, rid: str, password: str) -> bool:
    try:
        async with aiomqtt.Client(host, port, username=rid, password=password, identifier=rid, timeout=3):
            return True
    except aiomqtt.MqttError:
        return False


async def eventually_logs_in(host: str, port: int, rid: str, password: str, timeout: float) -> float:
    started = time.monotonic()
    while not await logs_in(host, port, rid, password):
        assert time.monotonic() - started < timeout, f"{rid} could not log in within {timeout} s"
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def test_a_password_given_while_mosquitto_is_down_reaches_it_when_it_is_back(tmp_path, sqlite_url):
    with production_mosquitto(tmp_path / "mq") as broker:
        async with running_service(mosquitto_settings(sqlite_url, broker)) as runtime:
            fleet = provision_fleet(runtime.sessions, receivers=1)
            await eventually_logs_in(broker.host, broker.port, "rx-0", fleet.credentials["rx-0"], timeout=10)
            with session_scope(runtime.sessions) as s:
                admin = auth.create_user(s, "admin", role="admin")
                headers = {"Authorization": f"Bearer {auth.issue_token(s, admin.id, 't')[1]}"}
            app = create_app(runtime=runtime, mqtt=False)
            app.state.runtime = runtime  # what its lifespan does; httpx does not run it
            api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                    base_url="http://loa.test", headers=headers, timeout=30)
            async with api:
                broker.server.stop()
                response = await api.post("/api/v1/receivers/rx-0/provision")
                # Saved and shown, not lost: the broker takes it when it can.
                assert response.status_code == 201, response.text
                body = response.json()
                assert body["broker_applied"] is False and "broker MQTT" in body["note"]
                await asyncio.to_thread(broker.restart)
                await eventually_logs_in(broker.host, broker.port, "rx-0", body["mqtt_password"], timeout=30)
                assert not await logs_in(broker.host, broker.port, "rx-0", fleet.credentials["rx-0"])
                # With the broker up, a change is applied before the answer.
                response = await api.post("/api/v1/receivers/rx-0/revoke")
                assert response.status_code == 200, response.text
                assert not await logs_in(broker.host, broker.port, "rx-0", body["mqtt_password"])
