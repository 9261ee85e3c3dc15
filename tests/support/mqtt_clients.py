"""Plain MQTT 3.1.1 clients for hostile tests against any broker: a paho client that records
everything that happens to it, the raw packets a client library would not send, and a flood of
CONNECTs.

    rx = MqttClient(host, port, "rx-1", "rx-1", password, will=Will(topic, payload))
    rx.accepted; rx.subscribe("loa/v1/rx/rx-1/#"); rx.publish(topic, payload, retain=True)
    rx.wait_for(lambda m: m.topic == ...)       # what the broker really delivered
    rx.kill()                                    # the link dies: no DISCONNECT, the Will fires

Every client can be bound to another loopback address (127.0.0.2, 127.0.0.3, ...) to act as a
different client address.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

# Long enough for one local round trip on a loaded 2-core machine, short enough to keep a
# failing test quick.
WAIT_S = 5.0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float


class MqttClient:
    """A paho MQTT 3.1.1 client on its own network thread that never reconnects by itself and
    keeps every message, SUBACK and the moment its connection ended."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None = None,
                 password: str | None = None, *, clean_session: bool = True, will: Will | None = None,
                 bind_address: str = "", keepalive: int = 60, timeout: float = WAIT_S) -> None:
        self.client_id = client_id
        self.connack: mqtt.ReasonCode | None = None
        self.disconnected = threading.Event()
        self.disconnected_at: float | None = None
        self.messages: list[Received] = []
        self._changed = threading.Condition()
        self._subacks: dict[int, list[mqtt.ReasonCode]] = {}
        self._connack = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311,
                                  reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        try:
            self.client.connect(host, port, keepalive=keepalive, bind_address=bind_address)
        except OSError:
            self._mark_disconnected()
            return
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connack.is_set() and not self.disconnected.is_set() and time.monotonic() < deadline:
            self._connack.wait(0.02)

    # -- paho callbacks (network thread) --------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self.connack = reason_code
        self._connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._mark_disconnected()

    def _mark_disconnected(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.disconnected.set()
        with self._changed:
            self._changed.notify_all()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        with self._changed:
            self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain),
                                          time.monotonic()))
            self._changed.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        with self._changed:
            self._subacks[mid] = list(reason_codes)
            self._changed.notify_all()

    # -- what the tests use ---------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        """The broker answered CONNACK 0 and the connection is still up."""
        return self.connack is not None and not self.connack.is_failure and not self.disconnected.is_set()

    @property
    def connected(self) -> bool:
        return self.accepted

    def subscribe(self, topic_filter: str, qos: int = 1) -> bool | None:
        """Subscribe and wait for the SUBACK: True if granted, False if refused (0x80), None if
        no SUBACK came (e.g. the broker dropped the connection instead). Tests never rely on
        it alone: what counts is what is delivered afterwards."""
        result, mid = self.client.subscribe(topic_filter, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            return None
        with self._changed:
            if not self._changed.wait_for(lambda: mid in self._subacks or self.disconnected.is_set(), WAIT_S):
                return None
            if mid not in self._subacks:
                return None
            return not any(rc.is_failure for rc in self._subacks[mid])

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish; with QoS 1 wait for the PUBACK. True if it went out (and was acknowledged)."""
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except (ValueError, OSError):
            return False
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        if qos == 0:
            return True
        deadline = time.monotonic() + WAIT_S
        while not info.is_published() and not self.disconnected.is_set() and time.monotonic() < deadline:
            time.sleep(0.005)
        return info.is_published()

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float = WAIT_S) -> Received | None:
        """The first message (received so far or within ``timeout``) for which ``predicate`` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def wait_disconnected(self, timeout: float = WAIT_S) -> bool:
        return self.disconnected.wait(timeout)

    def received(self, predicate: Callable[[Received], bool] = lambda m: True) -> list[Received]:
        with self._changed:
            return [m for m in self.messages if predicate(m)]

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a receiver losing power would: the
        broker publishes the Will."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._mark_disconnected()

    def close(self) -> None:
        """A clean goodbye (DISCONNECT: the broker discards the Will)."""
        try:
            if not self.disconnected.is_set():
                self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._mark_disconnected()


class Clients:
    """Every client a test made, closed at the end whatever happened."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._made: list[MqttClient] = []

    def connect(self, client_id: str, username: str | None = None, password: str | None = None,
                **kwargs: object) -> MqttClient:
        client = MqttClient(self.host, self.port, client_id, username, password, **kwargs)  # type: ignore[arg-type]
        self._made.append(client)
        return client

    def close_all(self) -> None:
        for client in self._made:
            try:
                client.close()
            except Exception:
                pass
        self._made.clear()


# --- raw packets ---------------------------------------------------------------------------------

def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str | None = None, password: str | None = None, *,
                   clean_session: bool = True, will: Will | None = None, keepalive: int = 60) -> bytes:
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _string(will.topic) + _string(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive)
    body = variable + payload
    return bytes([0x10]) + _remaining_length(len(body)) + body


def publish_header(topic: str, payload_length: int, *, qos: int = 0, retain: bool = False,
                   packet_id: int = 1) -> bytes:
    """The fixed header, topic and packet id of a PUBLISH whose payload follows separately (so
    that a 16 MB payload can be streamed)."""
    variable = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    return bytes([first]) + _remaining_length(len(variable) + payload_length) + variable


PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"


def read_packet(sock: socket.socket) -> tuple[int, bytes] | None:
    """One packet (type nibble, body), or None when the connection ends."""
    def exactly(n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    first = exactly(1)
    if first is None:
        return None
    length, shift = 0, 0
    while True:
        b = exactly(1)
        if b is None:
            return None
        length |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            break
    body = exactly(length) if length else b""
    if body is None:
        return None
    return first[0] >> 4, body


class RawConnection:
    """One CONNECT sent byte for byte (a Will on any topic, wildcards included, which client
    libraries refuse), its CONNACK, and an abrupt end."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None = None,
                 password: str | None = None, *, clean_session: bool = True, will: Will | None = None,
                 bind_address: str = "127.0.0.1", timeout: float = WAIT_S) -> None:
        self.sock = socket.socket()
        self.sock.settimeout(timeout)
        self.sock.bind((bind_address, 0))
        self.address, self.port = self.sock.getsockname()
        self.connack: int | None = None  # the return code, None if the broker sent no CONNACK
        try:
            self.sock.connect((host, port))
            self.sock.sendall(connect_packet(client_id, username, password, clean_session=clean_session, will=will))
            packet = read_packet(self.sock)
            if packet is not None and packet[0] == 2 and len(packet[1]) >= 2:
                self.connack = packet[1][1]
        except OSError:
            pass

    @property
    def accepted(self) -> bool:
        return self.connack == 0

    def kill(self) -> None:
        """Close without DISCONNECT (with a reset, as a link that dies does)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.sock.close()


@dataclass
class OversizeOutcome:
    connack: int | None           # CONNACK return code, None if none came
    sent_bytes: int               # payload bytes the broker took before it stopped reading
    closed_by_broker: bool        # the broker ended the connection
    pingresp_after: bool          # the connection still answered a PINGREQ after the publish


def publish_oversize(host: str, port: int, client_id: str, username: str, password: str, topic: str,
                     payload_size: int, *, bind_address: str = "127.0.0.1", qos: int = 0,
                     timeout: float = 20.0) -> OversizeOutcome:
    """Log in, stream one PUBLISH of ``payload_size`` bytes (a JSON-looking body), then ask for
    a PINGRESP: either the broker closes the connection (it refused the packet) or it answers
    (it read the whole packet)."""
    sock = socket.socket()
    sock.settimeout(timeout)
    sock.bind((bind_address, 0))
    sock.connect((host, port))
    try:
        sock.sendall(connect_packet(client_id, username, password))
        packet = read_packet(sock)
        if packet is None or packet[0] != 2:
            return OversizeOutcome(None, 0, True, False)
        rc = packet[1][1]
        if rc != 0:
            return OversizeOutcome(rc, 0, True, False)
        sent = 0
        chunk = b"x" * 65536
        try:
            sock.sendall(publish_header(topic, payload_size, qos=qos))
            body_start = b'{"v":1,"pad":"'
            sock.sendall(body_start)
            sent = len(body_start)
            while sent < payload_size - 2:
                n = min(len(chunk), payload_size - 2 - sent)
                sock.sendall(chunk[:n])
                sent += n
            sock.sendall(b'"}')
            sent += 2
            sock.sendall(PINGREQ)
        except (BrokenPipeError, ConnectionResetError):
            return OversizeOutcome(rc, sent, True, False)
        except socket.timeout:
            return OversizeOutcome(rc, sent, False, False)
        try:
            while True:
                packet = read_packet(sock)
                if packet is None:
                    return OversizeOutcome(rc, sent, True, False)
                if packet[0] == 13:
                    return OversizeOutcome(rc, sent, False, True)
        except (ConnectionResetError, BrokenPipeError):
            return OversizeOutcome(rc, sent, True, False)
        except socket.timeout:
            return OversizeOutcome(rc, sent, False, False)
    finally:
        sock.close()


# --- a flood of logins ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    bind_address: str
    client_id: str
    username: str | None
    password: str | None


@dataclass
class FloodResult:
    accepted: list[Attempt] = field(default_factory=list)
    refused: int = 0            # CONNACK with a non-zero return code
    closed: int = 0             # the broker closed the connection without a CONNACK
    failed: int = 0             # could not connect, or no answer within the per-attempt timeout
    elapsed_s: float = 0.0
    finished: bool = True       # every attempt was made before the deadline

    @property
    def answered(self) -> int:
        return self.refused + self.closed + len(self.accepted)


async def _attempt(host: str, port: int, attempt: Attempt, timeout: float, result: FloodResult) -> None:
    writer = None
    try:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((attempt.bind_address, 0))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(connect_packet(attempt.client_id, attempt.username, attempt.password))
        await writer.drain()
        try:
            header = await asyncio.wait_for(reader.readexactly(4), timeout)
        except asyncio.IncompleteReadError:
            result.closed += 1
            return
        if header[0] >> 4 == 2 and header[3] == 0:
            result.accepted.append(attempt)
        else:
            result.refused += 1
    except (TimeoutError, asyncio.TimeoutError, OSError):
        result.failed += 1
    finally:
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


async def flood_logins(host: str, port: int, attempts: Sequence[Attempt], *, concurrency: int = 32,
                       deadline_s: float = 60.0, per_attempt_timeout_s: float = 5.0) -> FloodResult:
    """Make every attempt (CONNECT, wait for CONNACK, close), ``concurrency`` at a time, until
    all are made or ``deadline_s`` has passed."""
    result = FloodResult()
    started = time.monotonic()
    queue: asyncio.Queue[Attempt] = asyncio.Queue()
    for attempt in attempts:
        queue.put_nowait(attempt)

    async def worker() -> None:
        while time.monotonic() - started < deadline_s:
            try:
                attempt = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await _attempt(host, port, attempt, per_attempt_timeout_s, result)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.monotonic() - started
    result.finished = queue.empty()
    return result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def loopback_addresses(first: str, count: int) -> list[str]:
    """``count`` loopback addresses from ``first`` on (127.0.2.1, 127.0.2.2, ...)."""
    a, b, c, d = (int(x) for x in first.split("."))
    return [f"{a}.{b}.{c}.{d + i}" for i in range(count)]


def only(messages: Iterable[Received], predicate: Callable[[Received], bool]) -> list[Received]:
    return [m for m in messages if predicate(m)]
