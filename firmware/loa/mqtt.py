# A small asyncio MQTT 3.1.1 client for a receiver on a slow, costly, unreliable link.
#
# Supported: CONNECT (clean session) with credentials and a Last Will, CONNACK return codes,
# PUBLISH QoS 0 and 1 both ways (QoS 1 waits for PUBACK and is retransmitted with DUP a
# bounded number of times), SUBSCRIBE/SUBACK, PINGREQ/PINGRESP keepalive with dead-connection
# detection, DISCONNECT, optional TLS. Not supported: QoS 2 (never requested), persistent
# sessions, MQTT 5.
#
# Memory is bounded: at most MAX_INFLIGHT unacknowledged QoS 1 packets; an incoming packet is
# read into one buffer of MAX_PACKET bytes that the application allocates once (at start-up,
# before the heap fragments) and lends to every connection; a larger one is skipped (and
# acknowledged) without being kept.
#
# One connection per Client object: when it ends (error, ping timeout, disconnect), `closed`
# is set and `error` says why; the application makes a new Client to reconnect.

import asyncio
from time import ticks_diff, ticks_ms

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # reserved flags 0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

# Largest incoming packet read into memory: a PUBLISH of the largest command the protocol
# allows (docs/protocol.md: 8192 bytes) on the longest command topic ("loa/v1/rx/" + a 64-character
# receiver id + "/cmd": 78 bytes): 2 (topic length) + 78 + 2 (packet id) + 8192.
MAX_PACKET = const(8274)
# Unacknowledged QoS 1 PUBLISH/SUBSCRIBE at once; a further one waits for room.
MAX_INFLIGHT = const(4)

# CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
REFUSED = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MQTTError(Exception):
    pass


class ConnectRefused(MQTTError):
    def __init__(self, code):
        super().__init__("connection refused: " + REFUSED.get(code, "code " + str(code)))
        self.code = code


class ConnectionLost(MQTTError):
    pass


class Timeout(MQTTError):
    pass


class AckTimeout(Timeout):
    pass


class PingTimeout(Timeout):
    pass


class ProtocolError(MQTTError):
    pass


def _length(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return out


def _string(data):
    if isinstance(data, str):
        data = data.encode()
    if len(data) > 0xFFFF:
        raise ValueError("string too long")
    return len(data).to_bytes(2, "big") + data


def _packet(first, body):
    return bytes((first,)) + _length(len(body)) + body


class Client:
    """``will`` is (topic, payload, qos, retain) or None. ``on_message(topic, payload,
    retained)`` is called for each incoming PUBLISH with the payload as a memoryview into
    ``buffer`` (a bytearray of MAX_PACKET, reused for the next packet: what the handler keeps
    it must copy or decode at once); an exception in it is logged and dropped, never ends the
    connection."""

    def __init__(self, client_id, username=None, password=None, keepalive=60, will=None,
                 on_message=None, connect_timeout=10, ack_timeout=10, ack_retries=2,
                 ping_timeout=10, ssl=None, server_hostname=None, log=None, buffer=None):
        self.client_id = client_id
        self.username = username
        self.password = password
        self.keepalive = keepalive
        self.will = will
        self.on_message = on_message
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.ack_retries = ack_retries
        self.ping_timeout = ping_timeout
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.log = log or _print
        self.closed = asyncio.Event()
        self.error = None
        self.connected = False
        self.last_received = ticks_ms()
        self.last_sent = ticks_ms()
        self._reader = None
        self._writer = None
        self._lock = asyncio.Lock()
        self._pending = {}  # packet id -> [Event, result]
        self._room = asyncio.Event()
        self._pid = 0
        self._ping_at = None  # ticks of an unanswered PINGREQ
        self._tasks = []
        self._buf = memoryview(buffer if buffer is not None else bytearray(MAX_PACKET))

    # -- connection ---------------------------------------------------------------------------

    async def connect(self, host, port):
        """Open the connection and complete CONNECT/CONNACK. Raises an MQTTError or OSError."""
        try:
            await asyncio.wait_for(self._open(host, port), self.connect_timeout)
        except asyncio.TimeoutError:
            self._close(Timeout("connect timed out"))
            raise Timeout("no CONNACK within " + str(self.connect_timeout) + " s")
        except BaseException as exc:
            self._close(exc if isinstance(exc, MQTTError) else ConnectionLost(repr(exc)))
            raise
        self.connected = True
        self._tasks.append(asyncio.create_task(self._read_loop()))
        if self.keepalive:
            self._tasks.append(asyncio.create_task(self._keepalive_loop()))

    async def _open(self, host, port):
        if self.ssl is not None:
            self._reader, self._writer = await asyncio.open_connection(
                host, port, ssl=self.ssl, server_hostname=self.server_hostname or host)
        else:
            self._reader, self._writer = await asyncio.open_connection(host, port)
        flags = 0x02  # clean session: nothing to resume, commands are re-sent by the service
        body = _string(self.client_id)
        if self.will is not None:
            topic, payload, qos, retain = self.will
            flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
            body += _string(topic) + _string(payload)
        if self.username is not None:
            flags |= 0x80
            body += _string(self.username)
            if self.password is not None:
                flags |= 0x40
                body += _string(self.password)
        header = b"\x00\x04MQTT\x04" + bytes((flags,)) + self.keepalive.to_bytes(2, "big")
        await self._send(_packet(_CONNECT, header + body))
        first, body = await self._read_packet()
        if first != _CONNACK or body is None or len(body) != 2:
            raise ProtocolError("expected CONNACK")
        if body[1] != 0:
            raise ConnectRefused(body[1])

    async def disconnect(self):
        """Send DISCONNECT (the broker then discards the Will) and close."""
        if self.connected:
            try:
                await self._send(b"\xe0\x00")
            except Exception:
                pass
        self._close(ConnectionLost("disconnected"))

    def abort(self, reason=None):
        """Close at once, without DISCONNECT (the broker will publish the Will)."""
        self._close(reason or ConnectionLost("aborted"))

    def _close(self, reason):
        if self.error is not None:
            return
        self.error = reason
        self.connected = False
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        for slot in self._pending.values():
            slot[0].set()
        self._room.set()
        self.closed.set()

    # -- sending ------------------------------------------------------------------------------

    async def _send(self, data):
        writer = self._writer
        if writer is None or self.error is not None:
            raise ConnectionLost("not connected")
        async with self._lock:
            writer.write(data)
            try:
                await asyncio.wait_for(writer.drain(), self.ack_timeout)
            except asyncio.TimeoutError:
                exc = ConnectionLost("send timed out")
                self._close(exc)
                raise exc
            except OSError as e:
                exc = ConnectionLost("send failed: " + repr(e))
                self._close(exc)
                raise exc
        self.last_sent = ticks_ms()

    def _next_pid(self):
        while True:
            self._pid = self._pid % 0xFFFF + 1
            if self._pid not in self._pending:
                return self._pid

    async def _acquire(self):
        """A packet id and a pending slot, waiting while MAX_INFLIGHT are unacknowledged."""
        while len(self._pending) >= MAX_INFLIGHT:
            if self.error is not None:
                raise ConnectionLost("connection closed")
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), self.ack_timeout)
            except asyncio.TimeoutError:
                raise AckTimeout("no room for another unacknowledged packet")
        if self.error is not None:
            raise ConnectionLost("connection closed")
        pid = self._next_pid()
        slot = [asyncio.Event(), None]
        self._pending[pid] = slot
        return pid, slot

    def _release(self, pid):
        self._pending.pop(pid, None)
        self._room.set()

    async def _exchange(self, packet, pid, slot, retries):
        """Send ``packet`` and wait for its acknowledgement, resending with DUP ``retries``
        times. A missing acknowledgement after that means the connection is dead."""
        try:
            for attempt in range(retries + 1):
                if attempt:
                    packet[0] |= 0x08  # DUP
                await self._send(packet)
                try:
                    await asyncio.wait_for(slot[0].wait(), self.ack_timeout)
                except asyncio.TimeoutError:
                    continue
                if slot[1] is None:
                    raise ConnectionLost("connection closed before the acknowledgement")
                return slot[1]
            exc = AckTimeout("no acknowledgement after " + str(retries + 1) + " tries")
            self._close(exc)
            raise exc
        finally:
            self._release(pid)

    async def publish(self, topic, payload, qos=0, retain=False):
        if isinstance(payload, str):
            payload = payload.encode()
        first = _PUBLISH | (qos << 1) | (1 if retain else 0)
        if qos == 0:
            await self._send(_packet(first, _string(topic) + payload))
            return
        if qos != 1:
            raise ValueError("QoS 0 or 1")
        pid, slot = await self._acquire()
        try:
            packet = bytearray(_packet(first, _string(topic) + pid.to_bytes(2, "big") + payload))
        except BaseException:
            self._release(pid)
            raise
        await self._exchange(packet, pid, slot, self.ack_retries)

    async def subscribe(self, filters):
        """``filters``: list of (topic filter, QoS). Returns the granted QoS list (0x80 for a
        refused filter)."""
        pid, slot = await self._acquire()
        try:
            body = bytearray(pid.to_bytes(2, "big"))
            for topic, qos in filters:
                body += _string(topic) + bytes((qos,))
            packet = bytearray(_packet(_SUBSCRIBE, body))
        except BaseException:
            self._release(pid)
            raise
        result = await self._exchange(packet, pid, slot, 0)
        return list(result)

    # -- receiving ----------------------------------------------------------------------------

    async def _readexactly(self, n):
        reader = self._reader
        if reader is None:
            raise ConnectionLost("not connected")
        try:
            data = await reader.readexactly(n)
        except EOFError:
            raise ConnectionLost("closed by the broker")
        except OSError as e:
            raise ConnectionLost("read failed: " + repr(e))
        return data

    async def _readinto(self, n):
        """Read exactly ``n`` bytes into the start of the buffer; returns a view of them."""
        reader = self._reader
        if reader is None:
            raise ConnectionLost("not connected")
        view = self._buf[:n]
        got = 0
        while got < n:
            try:
                k = await reader.readinto(view[got:] if got else view)
            except OSError as e:
                raise ConnectionLost("read failed: " + repr(e))
            if k is None:  # TLS: the socket was readable, but no whole record yet
                continue
            if not k:
                raise ConnectionLost("closed by the broker")
            got += k
        return view

    async def _skip(self, n):
        size = len(self._buf)
        while n > 0:
            k = n if n < size else size
            await self._readinto(k)
            n -= k

    async def _read_packet(self):
        """(first byte, body). The body is a view into the buffer, valid until the next read;
        it is None for a PUBLISH too large to keep: its topic and payload are skipped, and the
        first byte then carries the packet id's need for an acknowledgement (see _read_loop)."""
        first = (await self._readexactly(1))[0]
        length = 0
        shift = 0
        while True:
            byte = (await self._readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("bad remaining length")
        self.last_received = ticks_ms()
        self._ping_at = None
        if length <= len(self._buf):
            return first, await self._readinto(length)
        if first & 0xF0 != _PUBLISH:
            raise ProtocolError("oversized packet")
        # An oversized PUBLISH: skip the topic and payload, keep the packet id.
        topic_len = int.from_bytes(await self._readexactly(2), "big")
        await self._skip(topic_len)
        used = 2 + topic_len
        pid = None
        if first & 0x06:
            pid = await self._readexactly(2)
            used += 2
        await self._skip(length - used)
        self.log("mqtt: skipped an incoming PUBLISH of", length, "bytes")
        if pid is not None:
            await self._send(_packet(_PUBACK, pid))
        return first, None

    async def _read_loop(self):
        try:
            while True:
                first, body = await self._read_packet()
                kind = first & 0xF0
                if body is None:
                    continue
                if kind == _PUBLISH:
                    await self._on_publish(first, body)
                elif kind == _PUBACK or kind == _SUBACK:
                    if len(body) < 2:
                        raise ProtocolError("short acknowledgement")
                    pid = int.from_bytes(body[:2], "big")
                    slot = self._pending.get(pid)
                    if slot is not None:
                        slot[1] = bytes(body[2:]) if kind == _SUBACK else b""
                        slot[0].set()
                elif kind == _PINGRESP:
                    pass
                else:
                    raise ProtocolError("unexpected packet type " + hex(first))
        except asyncio.CancelledError:
            raise
        except MQTTError as exc:
            self._close(exc)
        except Exception as exc:
            self._close(ConnectionLost(repr(exc)))

    async def _on_publish(self, first, body):
        qos = (first >> 1) & 0x03
        if qos > 1:
            raise ProtocolError("QoS 2 PUBLISH (never subscribed with QoS 2)")
        topic_len = int.from_bytes(body[:2], "big")
        topic = bytes(body[2:2 + topic_len]).decode()
        pos = 2 + topic_len
        if qos:
            pid = bytes(body[pos:pos + 2])
            pos += 2
            await self._send(_packet(_PUBACK, pid))
        if self.on_message is not None:
            try:
                self.on_message(topic, body[pos:], bool(first & 0x01))
            except Exception as exc:
                self.log("mqtt: message handler failed:", repr(exc))

    # -- keepalive ----------------------------------------------------------------------------

    async def _keepalive_loop(self):
        # Ping when nothing was sent or nothing was received for 3/4 of the keepalive: the
        # first keeps the broker from dropping us, the second proves the broker is still
        # there. No PINGRESP (nor anything else) within ping_timeout: the connection is dead.
        idle = self.keepalive * 750
        try:
            while True:
                await asyncio.sleep_ms(500)
                now = ticks_ms()
                if self._ping_at is not None:
                    if ticks_diff(now, self._ping_at) > self.ping_timeout * 1000:
                        self._close(PingTimeout("no PINGRESP within " + str(self.ping_timeout) + " s"))
                        return
                elif ticks_diff(now, self.last_sent) >= idle or ticks_diff(now, self.last_received) >= idle:
                    self._ping_at = now
                    await self._send(b"\xc0\x00")
        except asyncio.CancelledError:
            raise
        except MQTTError:
            pass  # _send closed the connection already


def _print(*args):
    print(*args)
