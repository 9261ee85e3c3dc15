"""The network path of one virtual receiver (its 4G modem and the carrier), which can be cut.

A :class:`Link` opens TCP connections (:class:`Conn`) to the broker. While the link is *cut*
the sockets stay open but nothing passes in either direction, which is how a 4G connection
usually dies: no FIN, no RST, just silence.

* Bytes the receiver writes are *held* (as the TCP stack would keep them for retransmission)
  and sent when the link is restored.
* Bytes from the broker are not read (the transport stops reading), so the receiver sees
  nothing until the link is restored.
* Opening a new connection waits for the link to come back, and fails after the connect
  timeout if it does not (a SYN that goes nowhere).
* A connection the receiver gives up on while the link is cut cannot send its FIN either: it is
  *abandoned* and stays open and silent until the link is restored, when it is reset (the modem
  re-attached; the old connection is gone).

:meth:`Link.freeze` is the network side of a power loss: every open connection is left open
and silent (nothing more is written, no FIN) until the broker drops it.

The layer above a connection is a :class:`Sink` (the MQTT client); the connection pushes
bytes to it, so a receiver needs no reader task of its own.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

# Bytes held for one connection while the link is cut. TCP would block the writer once its
# send buffer is full; here a write that does not fit is refused and the caller decides
# (QoS 0 telemetry is dropped, anything else ends the connection). 16 KiB is a small
# embedded TCP send window.
HOLD_LIMIT = 16 * 1024


class LinkDown(ConnectionError):
    """The link is cut: a connection could not be opened before the timeout."""


class Sink(Protocol):
    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: BaseException | None) -> None: ...


class _NullSink:
    __slots__ = ()

    def feed(self, data: bytes) -> None:
        pass

    def lost(self, exc: BaseException | None) -> None:
        pass


_NULL_SINK = _NullSink()

# Connection states.
_OPEN = 0        # in use by the receiver
_ABANDONED = 1   # closed by the receiver while the link was cut; silent until restore
_FROZEN = 2      # the receiver lost power; silent until the broker drops the connection
_CLOSED = 3


class Conn(asyncio.Protocol):
    """One TCP connection through a :class:`Link`."""

    __slots__ = ("_link", "_transport", "_sink", "_state", "_held", "_lost")

    def __init__(self, link: Link) -> None:
        self._link = link
        self._transport: asyncio.Transport | None = None
        self._sink: Sink = _NULL_SINK
        self._state = _OPEN
        self._held: bytearray | None = None  # outgoing bytes held while cut
        self._lost: tuple[BaseException | None] | None = None  # a loss seen while cut

    # -- used by the layer above ------------------------------------------------------------

    def attach(self, sink: Sink) -> None:
        self._sink = sink

    @property
    def is_open(self) -> bool:
        return self._state == _OPEN and self._transport is not None

    def write(self, data: bytes) -> bool:
        """Send (or hold, while cut). False if the bytes cannot be taken: the connection is
        closed, or the link is cut and the hold buffer is full."""
        if self._state != _OPEN or self._transport is None or self._lost is not None:
            return False
        if self._link.is_cut:
            held = self._held
            if held is None:
                held = self._held = bytearray()
            if len(held) + len(data) > HOLD_LIMIT:
                return False
            held += data
            return True
        self._transport.write(data)
        return True

    def close(self) -> None:
        """Close as the receiver's TCP stack would: FIN now, or, while the link is cut, never
        (abandoned until the link is restored)."""
        if self._state != _OPEN:
            return
        self._sink = _NULL_SINK
        if self._link.is_cut:
            self._state = _ABANDONED
            return
        self._finish(abort=False)

    # -- used by the Link -------------------------------------------------------------------

    def _on_cut(self) -> None:
        if self._transport is not None and self._state != _CLOSED:
            self._transport.pause_reading()

    def _on_restore(self) -> None:
        transport = self._transport
        if transport is None or self._state == _CLOSED:
            return
        if self._state == _ABANDONED:
            self._finish(abort=True)
            return
        held, self._held = self._held, None
        if self._lost is not None:
            # The broker dropped the connection during the cut; the receiver learns it now.
            (exc,) = self._lost
            self._lost = None
            sink = self._sink
            self._finish(abort=True)
            sink.lost(exc)
            return
        if self._state == _OPEN and held and not transport.is_closing():
            transport.write(bytes(held))
        transport.resume_reading()

    def _freeze(self) -> None:
        if self._state in (_OPEN, _ABANDONED):
            self._state = _FROZEN
            self._sink = _NULL_SINK
            self._held = None

    def _finish(self, *, abort: bool) -> None:
        self._state = _CLOSED
        self._held = None
        self._sink = _NULL_SINK
        transport = self._transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()
        self._link._forget(self)

    def _deliver_lost(self, exc: BaseException | None) -> None:
        sink, self._sink = self._sink, _NULL_SINK
        sink.lost(exc)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._link.is_cut:
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._state != _OPEN:
            return  # frozen or abandoned: read and discarded, nobody is listening
        if self._link.is_cut:
            # Arrived in the same read as the cut; not seen by the receiver, ever (the radio
            # was gone). Rare and harmless: MQTT over a dead link loses in-flight data too.
            return
        self._sink.feed(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _CLOSED:
            return
        if self._state == _OPEN and self._link.is_cut:
            # Cannot be seen through a cut link: remember it for the restore.
            self._lost = (exc,)
            return
        state = self._state
        self._state = _CLOSED
        self._held = None
        self._link._forget(self)
        if state == _OPEN:
            self._deliver_lost(exc)


class Link:
    """A receiver's network path. One per virtual receiver, for its whole life."""

    __slots__ = ("_cut", "_restored", "_conns")

    def __init__(self) -> None:
        self._cut = False
        self._restored: asyncio.Future[None] | None = None
        self._conns: list[Conn] = []

    @property
    def is_cut(self) -> bool:
        return self._cut

    async def open(self, host: str, port: int, *, timeout: float) -> Conn:
        """Open a TCP connection. While the link is cut, wait for it to come back (a SYN being
        retransmitted) and fail with :class:`LinkDown` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._cut:
            if self._restored is None:
                self._restored = loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._restored), timeout)
            except TimeoutError:
                raise LinkDown(f"no network: connect to {host}:{port} timed out after {timeout:g}s") from None
        conn = Conn(self)
        remaining = max(deadline - loop.time(), 0.001)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, host, port), remaining)
        except TimeoutError:
            raise LinkDown(f"connect to {host}:{port} timed out after {timeout:g}s") from None
        self._conns.append(conn)
        return conn

    def cut(self) -> None:
        if self._cut:
            return
        self._cut = True
        for conn in tuple(self._conns):
            conn._on_cut()

    def restore(self) -> None:
        if not self._cut:
            return
        self._cut = False
        restored, self._restored = self._restored, None
        if restored is not None and not restored.done():
            restored.set_result(None)
        for conn in tuple(self._conns):
            conn._on_restore()

    def freeze(self) -> None:
        """Power loss: every connection goes silent; each is closed when the broker drops it
        (seen once the link is not cut) or at :meth:`close_all`."""
        for conn in tuple(self._conns):
            conn._freeze()

    def close_all(self) -> None:
        """Reset every connection at once (end of the simulation)."""
        for conn in tuple(self._conns):
            conn._finish(abort=True)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _forget(self, conn: Conn) -> None:
        try:
            self._conns.remove(conn)
        except ValueError:
            pass
