"""What one API process holds to serve firmware downloads, owned by the app's lifespan (the
downloads router's, merged into it). None of it decides anything another process could decide
differently (docs/architecture.md):

- ``AccessChecks``: every request is decided by a query that starts after it arrived, so a
  login revoked, a release withdrawn or an offer cancelled before a request came in refuses it,
  whichever process answers. Requests that arrive while one batch is decided are decided
  together by the next, on one connection in one trip to a worker thread.
- ``ReleaseCache``: a release's files, read once per process and checked against their SHA-256.
  They never change once uploaded; whether they may still be served is asked per request.
- ``ServedCounter``: bytes served per receiver and release, added up in memory and written
  every ``FLUSH_INTERVAL_S`` and at a clean stop. A process killed outright loses what it
  served since its last write: at most that interval's counts (and those of a write that was
  failing, kept and retried meanwhile). The downloads themselves lose nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime

import anyio
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.downloads import service
from fleet_service.downloads.repository import Served
from fleet_service.downloads.service import Ask, ReleaseFiles
from fleet_service.errors import LoaError

log = logging.getLogger(__name__)

# Bytes served reach the database this often: what a killed process can lose, and how late
# the counts can be (half a second, like the live state's connectivity).
FLUSH_INTERVAL_S = 0.5
# Requests decided by one set of queries at most: bounds the queries' IN lists.
MAX_BATCH = 500
# Release files kept per process. A release is tens to hundreds of KiB and a rollout offers
# one at a time, so this holds every release being rolled out many times over.
CACHE_BYTES = 64 * 1024 * 1024
# At a clean stop, attempts to write the last counts before giving them up (logged).
FINAL_FLUSH_ATTEMPTS = 3


class AccessChecks:
    """Decides requests in batches, each batch by fresh queries in a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waiting: list[tuple[Ask, asyncio.Future[LoaError | None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.asked = 0

    async def check(self, ask: Ask) -> None:
        """Returns if the login may fetch from the release; raises the error to answer."""
        future: asyncio.Future[LoaError | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((ask, future))
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        error = await future
        if error is not None:
            raise error

    async def _run(self) -> None:
        batch: list[tuple[Ask, asyncio.Future[LoaError | None]]] = []
        try:
            # Those that come while a batch is decided wait for the next: its queries start
            # after they arrived.
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    outcomes = await anyio.to_thread.run_sync(self._decide, [a for a, _ in batch])
                except Exception as exc:  # the database: each request answers with it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
                batch = []
        finally:
            self._task = None
            for _, future in batch + self._waiting:  # cancelled (the app stops): nobody left hanging
                future.cancel()

    def _decide(self, asks: list[Ask]) -> list[LoaError | None]:
        with self._engine.connect() as connection:  # read only: rolled back at the end
            outcomes = service.authorize_many(connection, asks)
        self.batches += 1
        self.asked += len(asks)
        return outcomes


class ReleaseCache:
    """A release's files by id, the least recently served dropped beyond ``max_bytes``."""

    def __init__(self, sessions: sessionmaker[Session], max_bytes: int = CACHE_BYTES) -> None:
        self._sessions = sessions
        self._max_bytes = max_bytes
        self._releases: OrderedDict[int, tuple[ReleaseFiles, int]] = OrderedDict()
        self._bytes = 0
        self._loading: dict[int, asyncio.Task[ReleaseFiles]] = {}

    async def files(self, release_id: int) -> ReleaseFiles:
        kept = self._releases.get(release_id)
        if kept is not None:
            self._releases.move_to_end(release_id)
            return kept[0]
        loading = self._loading.get(release_id)
        if loading is None:  # one read however many ask at once
            loading = self._loading[release_id] = asyncio.create_task(self._load(release_id))
        # A request that goes away does not cancel the read the others wait for.
        return await asyncio.shield(loading)

    async def _load(self, release_id: int) -> ReleaseFiles:
        try:
            files = await anyio.to_thread.run_sync(self._read, release_id)
        finally:
            del self._loading[release_id]
        size = sum(len(content) for _, content in files.values())
        self._releases[release_id] = (files, size)
        self._bytes += size
        while self._bytes > self._max_bytes and len(self._releases) > 1:
            _, (_, dropped) = self._releases.popitem(last=False)
            self._bytes -= dropped
        return files

    def _read(self, release_id: int) -> ReleaseFiles:
        with session_scope(self._sessions) as session:
            return service.load_release(session, release_id)


class ServedCounter:
    """Bytes and requests per (receiver, release) since the last write. ``add`` runs in the
    event loop, ``flush`` in a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], list[int | datetime]] = {}

    def add(self, receiver_id: str, release_id: int, sent: int) -> None:
        now = utcnow()
        with self._lock:
            count = self._counts.get((receiver_id, release_id))
            if count is None:
                self._counts[(receiver_id, release_id)] = [sent, 1, now, now]
            else:
                count[0] += sent  # type: ignore[operator]
                count[1] += 1  # type: ignore[operator]
                count[3] = now

    def pending(self) -> int:
        with self._lock:
            return len(self._counts)

    def _take(self) -> list[Served]:
        with self._lock:
            counts, self._counts = self._counts, {}
        return [Served(rid, release, *values) for (rid, release), values in counts.items()]  # type: ignore[arg-type]

    def _give_back(self, counts: list[Served]) -> None:
        with self._lock:
            for c in counts:
                count = self._counts.get((c.receiver_id, c.release_id))
                if count is None:
                    self._counts[(c.receiver_id, c.release_id)] = [c.bytes_served, c.requests, c.first_at, c.last_at]
                else:
                    count[0] += c.bytes_served  # type: ignore[operator]
                    count[1] += c.requests  # type: ignore[operator]
                    count[2] = c.first_at

    def flush(self, sessions: sessionmaker[Session]) -> int:
        """Writes what was counted; on failure keeps it for the next flush and raises."""
        counts = self._take()
        if not counts:
            return 0
        try:
            with session_scope(sessions) as session:
                service.record_served(session, counts)
        except BaseException:
            self._give_back(counts)
            raise
        return len(counts)


class Downloads:
    """The three parts, for one app (``app.state.downloads``)."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.access = AccessChecks(engine)
        self.releases = ReleaseCache(sessions)
        self.served = ServedCounter()

    async def flush(self) -> int:
        """Writes the bytes counted so far; returns how many receivers' rows it wrote."""
        return await anyio.to_thread.run_sync(self.served.flush, self.sessions)

    async def flush_every(self, interval_s: float) -> None:
        failing = False
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                if not failing:  # once per outage, not twice a second
                    log.exception("could not write the bytes of firmware served; kept, retried every %g s",
                                  interval_s)
                failing = True
            else:
                if failing:
                    log.info("bytes of firmware served written again")
                failing = False

    async def close(self) -> None:
        for attempt in range(1, FINAL_FLUSH_ATTEMPTS + 1):
            try:
                await self.flush()
                return
            except Exception:
                if attempt == FINAL_FLUSH_ATTEMPTS:
                    log.exception("bytes of firmware served to %d receivers lost at shutdown", self.served.pending())
                    return
                await asyncio.sleep(FLUSH_INTERVAL_S)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Inside the app's own lifespan, which has set ``app.state.runtime``: stopped before it."""
    runtime = app.state.runtime
    downloads = Downloads(runtime.engine, runtime.sessions)
    app.state.downloads = downloads
    flushing = asyncio.create_task(downloads.flush_every(FLUSH_INTERVAL_S))
    try:
        yield
    finally:
        flushing.cancel()
        with suppress(asyncio.CancelledError):
            await flushing
        await downloads.close()
