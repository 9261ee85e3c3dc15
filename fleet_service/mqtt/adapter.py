"""The service's one long-lived MQTT connection: subscribe, hand every message to ingest,
reconnect with backoff. Owned by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import random

import aiomqtt

from fleet_service.config import Settings
from fleet_service.ingest.service import IngestService
from fleet_service.protocol import service_subscriptions

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
# Incoming messages paho may hold while ingest catches up; beyond it the broker's own queue
# (and TCP) push back instead of our memory growing without bound.
MAX_QUEUED_INCOMING = 100_000


class MqttAdapter:
    def __init__(self, settings: Settings, ingest: IngestService, client_id: str = "loa-service") -> None:
        self.settings = settings
        self.ingest = ingest
        self.client_id = client_id
        self.connected = asyncio.Event()
        self.connections = 0

    async def run(self) -> None:
        delay = RECONNECT_MIN_S
        while True:
            try:
                async with aiomqtt.Client(
                    self.settings.mqtt_host,
                    self.settings.mqtt_port,
                    username=self.settings.mqtt_username,
                    password=self.settings.mqtt_password,
                    identifier=self.client_id,
                    keepalive=self.settings.mqtt_keepalive_s,
                    clean_session=True,
                    max_queued_incoming_messages=MAX_QUEUED_INCOMING,
                ) as client:
                    for topic, qos in service_subscriptions():
                        await client.subscribe(topic, qos=qos)
                    # Retained state arrives right after subscribing; silence is forgiven for a
                    # grace period so a (re)connecting service does not flip the fleet offline.
                    self.ingest.begin_grace()
                    self.connections += 1
                    self.connected.set()
                    log.info("connected to MQTT broker %s:%s", self.settings.mqtt_host, self.settings.mqtt_port)
                    delay = RECONNECT_MIN_S
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes | bytearray):
                            payload = str(payload).encode()
                        await self.ingest.handle(str(message.topic), bytes(payload), retained=bool(message.retain))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                wait = random.uniform(RECONNECT_MIN_S, delay)
                log.warning("MQTT connection lost or refused (%s); retrying in %.1f s", exc, wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, RECONNECT_MAX_S)
