"""A small asyncio MQTT 3.1.1 client: what a virtual receiver needs and nothing more.

Why not a library: ten thousand receivers must fit in one process, and the connection below
the client must be able to go silent (:mod:`simulators.link`), which no library client
allows. This client runs no task of its own: the connection pushes bytes into :meth:`feed`,
one timer per client drives the keepalive, and callers await futures only for the
acknowledgements they want.

Supported: CONNECT with credentials and a Will (clean session only), CONNACK return codes as
exceptions, PUBLISH QoS 0 and 1 both ways (QoS 1 waits for PUBACK with a timeout; with a
clean session there is nothing to retransmit after a reconnect), SUBSCRIBE/SUBACK including
the 0x80 failure code, PINGREQ/PINGRESP keepalive with a dead-connection timeout,
DISCONNECT. Not supported: QoS 2 (a receiver never subscribes above QoS 1), persistent
sessions.

Buffers are bounded: at most ``MAX_INFLIGHT`` unacknowledged requests (QoS 1 publishes beyond
that wait, at most ``MAX_BACKLOG`` of them, for a free slot), and the receive buffer holds at
most one partial packet of at most ``max_packet`` bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from simulators.link import Conn

log = logging.getLogger("loa.simulator.mqtt")

# Requests (QoS 1 publishes, subscribes) awaiting their acknowledgement at once. A receiver has
# a birth, an event or two and a subscribe in flight at most; more means the link is stuck.
MAX_INFLIGHT = 16
# QoS 1 publishes waiting for a free in-flight slot (a burst of acknowledgements, or the events
# queued while offline, sent after a birth). Beyond this the link is stuck: refuse.
MAX_BACKLOG = 64
# Largest packet accepted from the broker: state messages and commands are a few hundred
# bytes; anything bigger is a protocol error rather than a reason to grow a buffer.
MAX_PACKET = 16 * 1024

_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82  # reserved flags 0010
_SUBACK = 0x90
_PINGREQ = b"\xc0\x00"
_PINGRESP = 0xD0
_DISCONNECT = b"\xe0\x00"

_CONNECTING = 0
_CONNECTED = 1
_CLOSED = 2


# -- errors -----------------------------------------------------------------------------------


class MqttError(Exception):
    """Base of every error this client raises."""


class ConnectRefused(MqttError):
    """The broker answered CONNECT with a non-zero return code."""

    return_code = -1
    meaning = "refused"

    def __init__(self, detail: str = "") -> None:
        text = f"connection refused (CONNACK {self.return_code}: {self.meaning})"
        super().__init__(f"{text}: {detail}" if detail else text)


class UnacceptableProtocolVersion(ConnectRefused):
    return_code = 1
    meaning = "unacceptable protocol version"


class IdentifierRejected(ConnectRefused):
    return_code = 2
    meaning = "client identifier rejected"


class ServerUnavailable(ConnectRefused):
    return_code = 3
    meaning = "server unavailable"


class BadCredentials(ConnectRefused):
    return_code = 4
    meaning = "bad user name or password"


class NotAuthorized(ConnectRefused):
    return_code = 5
    meaning = "not authorized"


_REFUSALS: dict[int, type[ConnectRefused]] = {
    cls.return_code: cls
    for cls in (UnacceptableProtocolVersion, IdentifierRejected, ServerUnavailable, BadCredentials, NotAuthorized)
}


class ProtocolError(MqttError):
    """The broker sent something MQTT 3.1.1 does not allow here."""


class MqttTimeout(MqttError, TimeoutError):
    """An expected answer did not come in time."""


class ConnectTimeout(MqttTimeout):
    pass


class AckTimeout(MqttTimeout):
    pass


class PingTimeout(MqttTimeout):
    """No PINGRESP within the response timeout: the connection is dead."""


class ConnectionLost(MqttError):
    """The connection ended (closed by the broker, reset, or given up by this client)."""


class SubscribeRefused(MqttError):
    def __init__(self, refused: Sequence[str]) -> None:
        super().__init__(f"subscription refused (SUBACK 0x80) for {', '.join(refused)}")
        self.refused = tuple(refused)


class NotConnected(MqttError):
    pass


class InflightFull(MqttError):
    pass


class SendBufferFull(MqttError):
    """The link is cut and cannot hold more bytes for a packet that must not be dropped."""


# -- encoding ---------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return len(data).to_bytes(2, "big") + data


def _packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + _length(len(body)) + body


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Handler(Protocol):
    """The owner of a client: told about incoming messages and about the end of the
    connection (one object rather than two callbacks: a bound method per client adds up)."""

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None: ...

    def mqtt_lost(self, reason: BaseException) -> None: ...


class MqttClient:
    """One MQTT connection over one :class:`~simulators.link.Conn`. Create, :meth:`connect`,
    use, then :meth:`disconnect` or :meth:`close`; a new connection needs a new client."""

    __slots__ = (
        "_conn", "_loop", "_client_id", "_username", "_password", "_keepalive", "_response_timeout",
        "_will", "_handler", "_max_packet", "_state", "_buf", "_connack", "_pending",
        "_next_pid", "_last_tx", "_last_rx", "_pings", "_ping_sent", "_timer", "_probe", "closed",
        "dropped", "_backlog",
    )

    def __init__(
        self,
        conn: Conn,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 60,
        response_timeout: float | None = None,
        will: Will | None = None,
        handler: Handler | None = None,
        max_packet: int = MAX_PACKET,
    ) -> None:
        if not 0 <= keepalive <= 0xFFFF:
            raise ValueError("keepalive must be 0..65535 seconds")
        self._conn = conn
        self._loop = asyncio.get_running_loop()
        self._client_id = client_id
        self._username = username
        self._password = password
        self._keepalive = keepalive
        # How long a PINGREQ may wait for its PINGRESP before the connection counts as dead.
        self._response_timeout = response_timeout if response_timeout is not None else float(min(keepalive or 10, 10))
        self._will = will
        self._handler = handler
        self._max_packet = max_packet
        self._state = _CONNECTING
        self._buf: bytearray | None = None
        self._connack: asyncio.Future[int] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        # QoS 1 publishes waiting for an in-flight slot (created on first use).
        self._backlog: deque[tuple[int, bytes, asyncio.Future[bytes]]] | None = None
        self._next_pid = 0
        now = self._loop.time()
        self._last_tx = now
        self._last_rx = now
        self._pings = 0
        self._ping_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._probe: Callable[[], None] | None = None
        #: Resolved with the reason (an exception, not raised) when the connection ends.
        self.closed: asyncio.Future[BaseException] = self._loop.create_future()
        #: QoS 0 messages dropped because the cut link could hold no more.
        self.dropped = 0
        conn.attach(self)

    # -- public API -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._state == _CONNECTED

    @property
    def last_received(self) -> float:
        """Event-loop time of the last bytes from the broker (PINGRESPs included)."""
        return self._last_rx

    async def connect(self, *, timeout: float) -> bool:
        """Send CONNECT and wait for CONNACK. Returns the session-present flag; raises a
        :class:`ConnectRefused` subclass, :class:`ConnectTimeout` or :class:`ConnectionLost`."""
        if self._state != _CONNECTING or self._connack is not None:
            raise MqttError("connect() may be called once per client")
        flags = 0x02  # clean session
        payload = _string(self._client_id.encode())
        will = self._will
        if will is not None:
            flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
            payload += _string(will.topic.encode()) + _string(will.payload)
        if self._username is not None:
            flags |= 0x80
            payload += _string(self._username.encode())
            if self._password is not None:
                flags |= 0x40
                payload += _string(self._password.encode())
        body = b"\x00\x04MQTT\x04" + bytes((flags,)) + self._keepalive.to_bytes(2, "big") + payload
        self._connack = self._loop.create_future()
        if not self._write(_packet(_CONNECT, body)):
            self.close(SendBufferFull("cannot send CONNECT"))
        try:
            code = await asyncio.wait_for(asyncio.shield(self._connack), timeout)
        except TimeoutError:
            self.close(ConnectTimeout(f"no CONNACK within {timeout:g}s"))
            raise ConnectTimeout(f"no CONNACK within {timeout:g}s") from None
        if self._state == _CLOSED:  # accepted, but lost before this coroutine resumed
            reason = self.closed.result()
            raise reason if isinstance(reason, ConnectionLost) else ConnectionLost(str(reason))
        session_present = bool(code & 0x100)
        self._state = _CONNECTED
        # Needed for CONNECT only; a long-lived client should not keep them.
        self._connack = None
        self._will = None
        self._password = None
        self._arm(self._loop.time())
        return session_present

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> asyncio.Future[bytes] | None:
        """Write a PUBLISH now. QoS 0: returns None (dropped, and counted in ``dropped``, if a
        cut link holds no more). QoS 1: returns the future of its PUBACK."""
        if self._state != _CONNECTED:
            raise NotConnected(f"cannot publish to {topic}: not connected")
        header = _PUBLISH | (qos << 1) | (1 if retain else 0)
        if qos == 0:
            if not self._write(_packet(header, _string(topic.encode()) + payload)):
                self.dropped += 1
            return None
        if qos != 1:
            raise ValueError("only QoS 0 and 1 are supported")
        if len(self._pending) >= MAX_INFLIGHT:
            backlog = self._backlog
            if backlog is None:
                backlog = self._backlog = deque()
            if len(backlog) >= MAX_BACKLOG:
                raise InflightFull(f"{MAX_INFLIGHT} requests await acknowledgement and {MAX_BACKLOG} more wait")
            future: asyncio.Future[bytes] = self._loop.create_future()
            backlog.append((header, _string(topic.encode()) + b"\0\0" + payload, future))
            return future
        pid, future = self._request()
        if not self._write(_packet(header, _string(topic.encode()) + pid.to_bytes(2, "big") + payload)):
            self.close(SendBufferFull(f"cannot send PUBLISH to {topic}"))
        return future

    def _drain_backlog(self) -> None:
        """Send waiting publishes while in-flight slots are free (the packet id goes into the
        two placeholder bytes after the topic)."""
        backlog = self._backlog
        while backlog and len(self._pending) < MAX_INFLIGHT and self._state == _CONNECTED:
            header, body, future = backlog.popleft()
            if future.done():
                continue
            pid, _ = self._request(future)
            at = int.from_bytes(body[:2], "big") + 2
            if not self._write(_packet(header, body[:at] + pid.to_bytes(2, "big") + body[at + 2:])):
                self.close(SendBufferFull("cannot send a waiting PUBLISH"))
                return
        if not backlog:
            self._backlog = None

    async def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, timeout: float = 10.0) -> None:
        """Publish; for QoS 1 wait for PUBACK (:class:`AckTimeout` after ``timeout``)."""
        future = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        if future is not None:
            await self._await(future, timeout, AckTimeout(f"no PUBACK for {topic} within {timeout:g}s"))

    async def subscribe(self, topics: Sequence[tuple[str, int]], *, timeout: float = 10.0) -> tuple[int, ...]:
        """Subscribe and return the granted QoS per topic; :class:`SubscribeRefused` if the
        broker answered 0x80 for any of them."""
        if self._state != _CONNECTED:
            raise NotConnected("cannot subscribe: not connected")
        if not topics:
            raise ValueError("nothing to subscribe to")
        pid, future = self._request()
        body = pid.to_bytes(2, "big") + b"".join(_string(t.encode()) + bytes((q,)) for t, q in topics)
        if not self._write(_packet(_SUBSCRIBE, body)):
            self.close(SendBufferFull("cannot send SUBSCRIBE"))
        codes = await self._await(future, timeout, AckTimeout(f"no SUBACK within {timeout:g}s"))
        if len(codes) != len(topics):
            self.close(ProtocolError("SUBACK with the wrong number of return codes"))
            raise ProtocolError("SUBACK with the wrong number of return codes")
        refused = [t for (t, _), c in zip(topics, codes, strict=True) if c == 0x80]
        if refused:
            raise SubscribeRefused(refused)
        return tuple(codes)

    def probe(self, confirmed: Callable[[], None]) -> None:
        """Send a PINGREQ now and call ``confirmed`` once every outstanding PINGREQ has been
        answered, which proves the broker still holds this connection."""
        if self._state != _CONNECTED:
            return
        self._probe = confirmed
        self._send_ping(self._loop.time())
        self._arm(self._loop.time())

    def probe_cancel(self) -> None:
        self._probe = None

    def disconnect(self) -> None:
        """Send DISCONNECT and close the connection (the broker discards the Will)."""
        if self._state == _CLOSED:
            return
        if self._state == _CONNECTED:
            self._write(_DISCONNECT)
        self.close(ConnectionLost("disconnected by the client"))

    def close(self, reason: BaseException | None = None) -> None:
        """End the connection without DISCONNECT (the broker will publish the Will)."""
        if self._state == _CLOSED:
            return
        self._shutdown(reason or ConnectionLost("closed by the client"))
        self._conn.close()

    def halt(self) -> None:
        """Stop dead (power loss): no more bytes, no close; the connection is left as it is."""
        if self._state == _CLOSED:
            return
        self._shutdown(ConnectionLost("power lost"), notify=False)

    # -- Sink (called by the connection) ----------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self._state == _CLOSED:
            return
        self._last_rx = self._loop.time()
        buf = self._buf
        if buf is not None:
            buf += data
            view: bytes | bytearray = buf
        else:
            view = data
        pos = 0
        end = len(view)
        while self._state != _CLOSED and end - pos >= 2:
            header = view[pos]
            length = 0
            shift = 0
            i = pos + 1
            complete = False
            while i < end:
                byte = view[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    complete = True
                    break
                shift += 7
                if shift > 21:
                    self._fail(ProtocolError("malformed remaining length"))
                    return
            if not complete:
                break  # the length itself is not complete yet
            if length > self._max_packet:
                self._fail(ProtocolError(f"packet of {length} bytes exceeds {self._max_packet}"))
                return
            stop = i + length
            if stop > end:
                break
            self._handle(header, bytes(view[i:stop]))
            pos = stop
        if self._state == _CLOSED:
            self._buf = None
        elif pos >= end:
            self._buf = None
        elif buf is not None:
            del buf[:pos]
        else:
            self._buf = bytearray(view[pos:])

    def lost(self, exc: BaseException | None) -> None:
        if self._state == _CLOSED:
            return
        if exc is None:
            reason: BaseException = ConnectionLost("connection closed by the broker")
        else:
            reason = ConnectionLost(f"connection lost: {exc}")
            reason.__cause__ = exc
        self._shutdown(reason)

    # -- internals --------------------------------------------------------------------------

    def _handle(self, header: int, body: bytes) -> None:
        kind = header & 0xF0
        if kind == _PUBLISH:
            self._on_publish(header, body)
        elif kind == _PINGRESP:
            if self._pings:
                self._pings -= 1
            if not self._pings and self._probe is not None:
                confirmed, self._probe = self._probe, None
                confirmed()
        elif kind in (_PUBACK, _SUBACK):
            if len(body) < 2:
                self._fail(ProtocolError("acknowledgement without packet id"))
                return
            pid = int.from_bytes(body[:2], "big")
            future = self._pending.pop(pid, None)
            if not self._pending:
                self._pending = {}  # an empty dict without the table the last request grew
            if future is not None and not future.done():
                future.set_result(body[2:])
            if self._backlog:
                self._drain_backlog()
        elif kind == _CONNACK:
            connack = self._connack
            if self._state != _CONNECTING or connack is None or len(body) != 2:
                self._fail(ProtocolError("unexpected CONNACK"))
                return
            code = body[1]
            if code:
                # Refused: the broker closes the connection next; the refusal is the reason.
                refusal = _REFUSALS.get(code)
                exc: ConnectRefused = refusal() if refusal else ConnectRefused(f"unknown return code {code}")
                if not connack.done():
                    connack.set_exception(exc)
                    connack.exception()
                self._fail(exc)
            elif not connack.done():
                connack.set_result(code | ((body[0] & 1) << 8))
        else:
            self._fail(ProtocolError(f"unexpected packet type 0x{header:02x}"))

    def _on_publish(self, header: int, body: bytes) -> None:
        qos = (header >> 1) & 3
        if qos > 1 or len(body) < 2:
            self._fail(ProtocolError(f"PUBLISH with QoS {qos}" if qos > 1 else "short PUBLISH"))
            return
        tlen = int.from_bytes(body[:2], "big")
        at = 2 + tlen
        try:
            topic = body[2:at].decode()
        except UnicodeDecodeError:
            self._fail(ProtocolError("topic is not UTF-8"))
            return
        if qos:
            pid = body[at:at + 2]
            at += 2
            self._write(_packet(_PUBACK, pid))
        handler = self._handler
        if handler is not None:
            try:
                handler.mqtt_message(topic, body[at:], bool(header & 1))
            except Exception:  # a bad message never kills the connection
                log.exception("message handler failed for %s", topic)

    def _request(self, future: asyncio.Future[bytes] | None = None) -> tuple[int, asyncio.Future[bytes]]:
        if len(self._pending) >= MAX_INFLIGHT:
            raise InflightFull(f"{MAX_INFLIGHT} requests already await acknowledgement")
        pid = self._next_pid
        while True:
            pid = pid % 0xFFFF + 1
            if pid not in self._pending:
                break
        self._next_pid = pid
        if future is None:
            future = self._loop.create_future()
        self._pending[pid] = future
        return pid, future

    async def _await(self, future: asyncio.Future[bytes], timeout: float, on_timeout: MqttTimeout) -> bytes:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            for pid, pending in tuple(self._pending.items()):
                if pending is future:
                    del self._pending[pid]
            future.cancel()
            raise on_timeout from None

    def _write(self, data: bytes) -> bool:
        if self._conn.write(data):
            self._last_tx = self._loop.time()
            return True
        return False

    def _send_ping(self, now: float) -> None:
        if self._write(_PINGREQ):
            self._pings += 1
            self._ping_sent = now
        elif not self._pings:
            self._ping_sent = now  # could not even queue it: count it as outstanding
            self._pings = 1

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        keepalive = self._keepalive
        due = float("inf")
        if self._pings:
            due = self._ping_sent + self._response_timeout
        if keepalive:
            due = min(due, self._last_tx + keepalive)
            if not self._pings:
                due = min(due, self._last_rx + keepalive)
        if due == float("inf"):
            self._timer = None
            return
        self._timer = self._loop.call_at(max(due, now + 0.005), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._state != _CONNECTED:
            return
        now = self._loop.time()
        if self._pings and now - self._ping_sent >= self._response_timeout:
            self._fail(PingTimeout(f"no PINGRESP within {self._response_timeout:g}s"))
            return
        keepalive = self._keepalive
        if keepalive and (now - self._last_tx >= keepalive or (not self._pings and now - self._last_rx >= keepalive)):
            self._send_ping(now)
        self._arm(now)

    def _fail(self, reason: BaseException) -> None:
        """The connection is unusable: close it and tell the owner."""
        if self._state == _CLOSED:
            return
        self._shutdown(reason)
        self._conn.close()

    def _shutdown(self, reason: BaseException, *, notify: bool = True) -> None:
        self._state = _CLOSED
        self._buf = None
        self._probe = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lost = reason if isinstance(reason, ConnectionLost) else ConnectionLost(str(reason))
        if lost is not reason:
            lost.__cause__ = reason
        connack = self._connack
        if connack is not None and not connack.done():
            connack.set_exception(lost)
            connack.exception()  # retrieved here; connect() sees it when it awaits
        pending, self._pending = self._pending, {}
        backlog, self._backlog = self._backlog or (), None
        for future in (*pending.values(), *(f for _, _, f in backlog)):
            if not future.done():
                future.set_exception(lost)
                future.exception()
        if not self.closed.done():
            self.closed.set_result(reason)
        if notify and self._handler is not None:
            try:
                self._handler.mqtt_lost(reason)
            except Exception:
                log.exception("connection-lost handler failed")
