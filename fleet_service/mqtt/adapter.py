"""The service's one long-lived MQTT connection: subscribe, hand every message to ingest,
reconnect with backoff. Owned by the app's lifespan.

paho-mqtt is driven by the service's asyncio loop directly (paho's socket callbacks register
the socket with the loop; a timer runs paho's keepalive housekeeping), and each message goes to
ingest from paho's callback with no task or queue in between. Measured (bench/RESULTS.md),
this halves the per-message cost compared with an async-iterator wrapper around paho, which is
what lets ingest keep up with a whole province reconnecting at once."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import threading
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_service.config import Settings
from fleet_service.ingest.service import IngestService
from fleet_service.protocol import service_subscriptions

log = logging.getLogger(__name__)

RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
# How long to wait for CONNACK and SUBACK before giving up on a connection attempt.
CONNECT_TIMEOUT_S = 15.0
# paho's housekeeping (keepalive pings, retries) runs this often.
MISC_INTERVAL_S = 1.0
# Packets read per wake-up of the loop while more are waiting: under load this saves a trip
# through the event loop per message; the bound keeps the API responsive meanwhile.
READ_BURST = 64
# Commands (QoS 1) the service may have on their way to the broker, unacknowledged, at once:
# no limit (0). paho's default of 20 would pace a fleet-wide command by round trips, and any
# window costs O(window) per PUBACK in paho (measured: 28 % of the service's time for a play to
# 10,000 receivers with a window of 1,000; bench/RESULTS.md). Mosquitto takes the whole burst.
MAX_INFLIGHT = 0


class ConnectRefused(ConnectionError):
    pass


def _more_waiting(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # nothing waiting (EAGAIN), or the socket is gone: back to the loop
        return False


class _Connection:
    """One MQTT connection's life: connect, subscribe, deliver, until it is lost."""

    def __init__(self, adapter: MqttAdapter, loop: asyncio.AbstractEventLoop) -> None:
        self.adapter = adapter
        self.loop = loop
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self._subscribe_mid: int | None = None
        self._misc: asyncio.TimerHandle | None = None
        settings = adapter.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=adapter.client_id, clean_session=True,
                             protocol=mqtt.MQTTv311)
        client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self.client = client

    # --- socket <-> event loop ------------------------------------------------------------------

    def _in_loop(self, callback: Any, *args: Any) -> None:
        # paho opens the socket inside connect(), which runs in a worker thread (a blocking TCP
        # connect must not stall the loop); every other callback comes from the loop itself.
        if threading.get_ident() == self.adapter._loop_thread:
            callback(*args)
        else:
            self.loop.call_soon_threadsafe(callback, *args)

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        self._in_loop(self.loop.add_reader, sock, self._on_readable)

    def _on_readable(self) -> None:
        client = self.client
        for _ in range(READ_BURST):
            client.loop_read()
            sock = client.socket()
            # A TCP or TLS socket: the service never connects over websockets.
            if sock is None or not _more_waiting(cast(socket.socket, sock)):
                return

    def _on_socket_close(self, _client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        self._in_loop(self.loop.remove_reader, sock)
        self._in_loop(self.loop.remove_writer, sock)

    def _on_socket_register_write(self, client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        self._in_loop(self.loop.add_writer, sock, client.loop_write)

    def _on_socket_unregister_write(self, _client: mqtt.Client, _userdata: Any, sock: mqtt.SocketLike) -> None:
        self._in_loop(self.loop.remove_writer, sock)

    def _tick(self) -> None:
        self.client.loop_misc()
        if not self.closed.done():
            self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)

    # --- MQTT ---------------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            if not self.ready.done():
                self.ready.set_exception(ConnectRefused(f"broker refused the service's login: {reason}"))
            return
        _, self._subscribe_mid = client.subscribe(service_subscriptions())

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: Any, _props: Any) -> None:
        if mid != self._subscribe_mid or self.ready.done():
            return
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.ready.set_exception(ConnectRefused(f"broker refused the service's subscriptions: {refused}"))
        else:
            self.ready.set_result(None)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            # Typed bytes | bytearray, but paho decodes a PUBLISH with struct.unpack: bytes.
            self.adapter.ingest.handle(message.topic, cast(bytes, message.payload), retained=message.retain)
        except Exception:  # ingest never raises for bad input; anything else is a bug, logged
            log.exception("ingest failed on a message on %r", message.topic)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection closed before it was ready: {reason}"))
        if not self.closed.done():
            self.closed.set_result(str(reason))

    # --- life ---------------------------------------------------------------------------------

    async def open(self) -> None:
        settings = self.adapter.settings
        await asyncio.to_thread(self.client.connect, settings.mqtt_host, settings.mqtt_port,
                                settings.mqtt_keepalive_s)
        self._misc = self.loop.call_later(MISC_INTERVAL_S, self._tick)
        await asyncio.wait_for(asyncio.shield(self.ready), timeout=CONNECT_TIMEOUT_S)

    def close(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
        sock = self.client.socket()
        if sock is not None:
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            # Say goodbye and let paho flush DISCONNECT and close the socket now: the loop may
            # be about to stop and would never call the writer again.
            self.client.disconnect()
            self.client.loop_write()
        if not self.closed.done():
            self.closed.set_result("closed by the service")


def service_client_id() -> str:
    """A client id of this process's own: two service processes on one broker do not take each
    other's session over, and nobody can aim at the service's session by a known id."""
    return f"loa-service-{secrets.token_hex(6)}"


class MqttAdapter:
    def __init__(self, settings: Settings, ingest: IngestService, client_id: str | None = None) -> None:
        self.settings = settings
        self.ingest = ingest
        self.client_id = client_id or service_client_id()
        self.connected = asyncio.Event()
        self.connections = 0
        self._loop_thread: int | None = None
        self._connection: _Connection | None = None

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Publish from the event loop's thread. False when not connected (the caller keeps
        what it wanted to send and tries again later)."""
        connection = self._connection
        if connection is None or not self.connected.is_set():
            return False
        info = connection.client.publish(topic, payload, qos=qos)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    async def run(self) -> None:
        """Connect, serve, and reconnect with jittered exponential backoff, until cancelled."""
        loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        delay = RECONNECT_MIN_S
        while True:
            connection = _Connection(self, loop)
            try:
                await connection.open()
                # Retained state arrives right after subscribing; silence is forgiven for a
                # grace period so a (re)connecting service does not flip the fleet offline.
                self.ingest.begin_grace()
                self.connections += 1
                self._connection = connection
                self.connected.set()
                log.info("connected to MQTT broker %s:%s", self.settings.mqtt_host, self.settings.mqtt_port)
                delay = RECONNECT_MIN_S
                reason = await connection.closed
                log.warning("MQTT connection lost (%s)", reason)
            except (OSError, TimeoutError, ConnectRefused) as exc:
                log.warning("MQTT connection to %s:%s failed: %s", self.settings.mqtt_host, self.settings.mqtt_port,
                            exc or exc.__class__.__name__)
            finally:
                if self.connected.is_set():
                    self.ingest.connection_lost()
                self.connected.clear()
                self._connection = None
                connection.close()
            wait = random.uniform(RECONNECT_MIN_S, delay)
            await asyncio.sleep(wait)
            delay = min(delay * 2, RECONNECT_MAX_S)
