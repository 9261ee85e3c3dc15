"""The service's one long-lived MQTT connection: subscribe, hand every message to ingest,
reconnect with backoff. Owned by the app's lifespan.

paho-mqtt is driven by the service's asyncio loop directly (paho's socket callbacks register
the socket with the loop; a timer runs paho's keepalive housekeeping), and each message goes to
ingest from paho's callback with no task or queue in between. Measured (bench/RESULTS.md),
this halves the per-message cost compared with an async-iterator wrapper around paho, which is
what lets ingest keep up with a whole province reconnecting at once. The socket is read in
large chunks (``BufferedReads``) rather than in paho's one system call per header byte."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
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
# Packets handled per turn of the loop while more are waiting: under load this saves a trip
# through the event loop per message; the bound keeps the API responsive meanwhile.
READ_BURST = 64
# Bytes taken from the kernel per read of the broker's socket (a few hundred messages).
READ_CHUNK = 65536
# Commands (QoS 1) the service may have on their way to the broker, unacknowledged, at once:
# no limit (0). paho's default of 20 would pace a fleet-wide command by round trips, and any
# window costs O(window) per PUBACK in paho (measured: 28 % of the service's time for a play to
# 10,000 receivers with a window of 1,000; bench/RESULTS.md). Mosquitto takes the whole burst.
MAX_INFLIGHT = 0


class ConnectRefused(ConnectionError):
    pass


class BufferedReads:
    """The broker connection's socket, read in chunks. paho reads each packet with one recv()
    per header byte and one for the rest, three or four system calls per message (a fifth of
    the service's time under load, measured with py-spy); here one recv() takes what the kernel
    holds, up to READ_CHUNK, and paho's small reads are served from it. Everything else goes to
    the socket. Because what is buffered here is invisible to the event loop's poll, the reader
    drains it before it returns to the loop (``pending``)."""

    __slots__ = ("_sock", "_buffer", "_pos")

    def __init__(self, sock: mqtt.SocketLike) -> None:
        self._sock = sock
        self._buffer = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        pos = self._pos
        if pos >= len(self._buffer):
            # Raises BlockingIOError (or ssl.SSLWantReadError) when nothing is waiting, which
            # paho takes as "no more for now"; b"" when the broker closed the connection.
            chunk = self._sock.recv(READ_CHUNK)
            if not chunk:
                return b""
            self._buffer, pos = chunk, 0
        self._pos = pos + size
        return self._buffer[pos:pos + size]

    def pending(self) -> int:
        """Bytes read from the kernel (or, over TLS, decrypted) that paho has not taken yet."""
        buffered = len(self._buffer) - self._pos
        if buffered > 0:
            return buffered
        pending = getattr(self._sock, "pending", None)  # an ssl.SSLSocket's own buffer
        return pending() if pending is not None else 0

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:  # settimeout, getpeercert, do_handshake …
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client, reading its socket through BufferedReads. paho wraps a websocket
    connection the same way, in ``_create_socket``."""

    def _create_socket(self) -> mqtt.SocketLike:
        return cast("mqtt.SocketLike", BufferedReads(super()._create_socket()))


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
        client = _Client(CallbackAPIVersion.VERSION2, client_id=adapter.client_id, clean_session=True,
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
        reads = client.socket()
        if not isinstance(reads, BufferedReads):  # closed meanwhile
            return
        for _ in range(READ_BURST):
            client.loop_read()
            if client.socket() is not reads:
                return
            if not reads.pending():
                return
        # More is buffered than one turn handles. The kernel's side may be empty, so the loop's
        # poll would not come back for it: come back on the next turn.
        self.loop.call_soon(self._on_readable)

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
