"""A TCP relay between one real receiver process and the broker: that receiver's 4G link.

The firmware on the unix port uses the host's network, which cannot be cut. Pointed at this
relay instead of the broker, its link can be:

* **cut**: nothing passes either way, no FIN, no RST (bytes already read are held and passed
  on at the restore, as TCP would retransmit them); a new connection is accepted by the relay
  but not passed to the broker until the restore, so its CONNECT gets no answer;
* **frozen** (the network side of a power loss): the connections open now pass nothing more
  and are not closed towards the broker, which drops them at keepalive expiry as it would a
  receiver that lost power.

It also tells what really happened for the ground truth: a connection is *up* once the broker
accepted it (CONNACK, return code 0) and the link is not cut, and after a cut again at the
first bytes from the broker once the link is back; *down* at a cut, a freeze, or the end of
the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

# Read size per pass: MQTT packets of a receiver are far smaller.
_CHUNK = 64 * 1024
# CONNACK with return code 0: packet type 0x20, remaining length 2, flags, code 0.
_CONNACK = 0x20


class _Pipe:
    """One relayed connection."""

    __slots__ = ("client", "upstream", "accepted", "frozen", "tasks")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.accepted = False   # the broker accepted its CONNECT
        self.frozen = False
        self.tasks: list[asyncio.Task[None]] = []


class SilentLinkRelay:
    """``on_change(up, cause)`` is told every transition the ground truth should record."""

    def __init__(self, broker_host: str, broker_port: int, on_change: Callable[[bool, str], None]) -> None:
        self.broker_host, self.broker_port = broker_host, broker_port
        self._on_change = on_change
        self._server: asyncio.Server | None = None
        self._restored = asyncio.Event()
        self._restored.set()
        self._pipes: set[_Pipe] = set()
        self.connections = 0  # accepted from the receiver so far
        self.port = 0

    @property
    def is_cut(self) -> bool:
        return not self._restored.is_set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self) -> None:
        if self.is_cut:
            return
        self._restored.clear()
        self._on_change(False, "link_cut")

    def restore(self) -> None:
        self._restored.set()

    def freeze(self) -> None:
        """Power loss: open connections go silent for good; the broker finds out by itself."""
        for pipe in self._pipes:
            pipe.frozen = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pipe in list(self._pipes):
            for task in pipe.tasks:
                task.cancel()
            for writer in (pipe.client, pipe.upstream):
                if writer is not None:
                    writer.transport.abort()
        self._pipes.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pipe = _Pipe(writer)
        self._pipes.add(pipe)
        try:
            await self._restored.wait()  # a SYN through a cut link goes nowhere until the restore
            try:
                up_reader, pipe.upstream = await asyncio.open_connection(self.broker_host, self.broker_port)
            except OSError:
                writer.transport.abort()
                return
            pipe.tasks = [asyncio.current_task()]  # type: ignore[list-item]
            inbound = asyncio.create_task(self._pump(up_reader, writer, pipe, from_broker=True))
            pipe.tasks.append(inbound)
            await self._pump(reader, pipe.upstream, pipe, from_broker=False)
            await inbound
        except asyncio.CancelledError:
            # close() ends the connection. Ending normally: Python 3.11's start_server logs a
            # handler task that ends cancelled as an error ("Exception in callback").
            return
        finally:
            self._pipes.discard(pipe)
            if pipe.accepted and not pipe.frozen:
                self._on_change(False, "connection_closed")

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pipe: _Pipe, *,
                    from_broker: bool) -> None:
        first = from_broker
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                data = b""
            if pipe.frozen:
                if not data:
                    with contextlib.suppress(Exception):
                        writer.transport.abort()
                    return
                continue  # swallowed: nobody is listening any more
            await self._restored.wait()
            if pipe.frozen:
                continue
            if not data:
                writer.close()  # the other side closed: pass the FIN on
                return
            if from_broker:
                if first:
                    first = False
                    pipe.accepted = len(data) >= 4 and data[0] == _CONNACK and data[3] == 0
                    if pipe.accepted:
                        self._on_change(True, "connected")
                elif pipe.accepted:
                    self._on_change(True, "link_restored")  # the session outlived a cut
            writer.write(data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
