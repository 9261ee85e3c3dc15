"""A TCP relay on a free 127.0.0.1 port in front of a server (the broker), run by its own
event loop in a thread, so that tests can do to a receiver's link what 4G does:

    forward   bytes pass both ways (counted: ``bytes_up`` client -> server, ``bytes_down``)
    silence   nothing passes either way and nothing is closed: no FIN, no RST, what a 4G dead
              zone looks like; bytes sent meanwhile are held (as TCP retransmissions would
              deliver them) and pass on ``resume``; new connections are accepted but not
              connected through until then
    resume    forward again
    cut       close every current connection (the relay keeps accepting new ones)

    with TcpRelay(broker.port) as relay:
        connect the client to relay.port ...
        relay.silence(8.0)      # silent for 8 s, then forwarding again by itself
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

# Largest read per direction: one MQTT packet of the protocol's size, or a TLS record.
READ_BYTES = 65536


@dataclass
class Counts:
    bytes_up: int = 0      # client -> server
    bytes_down: int = 0    # server -> client
    writes_up: int = 0     # reads passed on (roughly TCP segments with small packets)
    writes_down: int = 0


class TcpRelay:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.connections = 0          # accepted since start
        self.totals = Counts()        # every connection since start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._resume_at: asyncio.TimerHandle | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> TcpRelay:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def begin() -> None:
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(begin())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="tcp-relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the relay did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def end() -> None:
            if self._server is not None:
                self._server.close()
            self._close_all()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the link does ----------------------------------------------------------------
    def silence(self, seconds: float | None = None) -> None:
        """Stop forwarding both ways, keeping every socket open; forward again after
        ``seconds`` (None: until ``resume``)."""
        def go() -> None:
            assert self._flowing is not None and self._loop is not None
            self._flowing.clear()
            if self._resume_at is not None:
                self._resume_at.cancel()
            self._resume_at = self._loop.call_later(seconds, self._resume) if seconds is not None else None

        self._call(go)

    def resume(self) -> None:
        self._call(self._resume)

    def cut(self) -> None:
        """Close every current connection (the client sees the connection end)."""
        self._call(self._close_all)

    @property
    def silent(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    def counts(self) -> Counts:
        with self._lock:
            return Counts(**vars(self.totals))

    # -- inside the loop -------------------------------------------------------------------
    def _call(self, fn) -> None:
        if self._loop is None:
            raise RuntimeError("the relay is not running")
        done = threading.Event()

        def run() -> None:
            try:
                fn()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _resume(self) -> None:
        assert self._flowing is not None
        self._resume_at = None
        self._flowing.set()

    def _close_all(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        with self._lock:
            self.connections += 1
        self._open.add(client_w)
        await self._flowing.wait()  # a dead zone: the connection goes nowhere until it ends
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()  # the server is down: the client sees a reset
            self._open.discard(client_w)
            return
        self._open.add(server_w)
        await asyncio.gather(self._pipe(client_r, server_w, True), self._pipe(server_r, client_w, False))
        self._open.discard(client_w)
        self._open.discard(server_w)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(READ_BYTES)
                if not data:
                    break
                await self._flowing.wait()  # silence began during the read: hold the bytes
                dst.write(data)
                await dst.drain()
                with self._lock:
                    if up:
                        self.totals.bytes_up += len(data)
                        self.totals.writes_up += 1
                    else:
                        self.totals.bytes_down += len(data)
                        self.totals.writes_down += 1
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other (as the far end's FIN or RST would).
            dst.close()
