"""What one API process holds to serve firmware downloads, owned by the app's lifespan (the
downloads router's, merged into it). None of it decides anything another process could decide
differently (docs/architecture.md):

- ``AccessChecks``: every request is decided by a query that starts after it arrived, so a
  login revoked, a release withdrawn or an offer cancelled before a request came in refuses it,
  whichever process answers. Requests that arrive while one batch is decided are decided
  together by the next, on one connection, in a thread of its own (on SQLite, at once in the
  event loop).
- ``ReleaseCache``: a release's files, read once per process and checked against their SHA-256.
  They never change once uploaded; whether they may still be served is asked per request.
- ``ServedCounter``: bytes served per receiver and release, added up in memory and written
  every ``FLUSH_INTERVAL_S`` and at a clean stop. A process killed outright loses what it
  served since its last write: at most that interval's counts (and those of a write that was
  failing, kept and retried meanwhile). The downloads themselves lose nothing.

``Downloads.fetch`` is the one sequence of decisions for a request, taken by the API's route
and by the download listener (listener.py, on ``LOA_DOWNLOAD_PORT``) alike.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from fastapi import FastAPI
from sqlalchemy import Engine, PoolProxiedConnection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.downloads import repository, service
from fleet_service.downloads.listener import DownloadListener
from fleet_service.downloads.repository import Served
from fleet_service.downloads.service import Ask, ReleaseFiles
from fleet_service.errors import LoaError, Unavailable

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


class Later:
    """What ``AccessChecks.decide_here`` says of a request it leaves to the thread."""


LATER = Later()


class AccessChecks:
    """Decides requests in a thread of its own (a hand-over to it costs a third of one to
    anyio's worker threads), in batches: each batch is the requests that came while the
    previous one was decided, each request checked by its own statement on one connection
    (on PostgreSQL the batch's statements are sent together, repository.AccessQuery).

    On SQLite a request is decided in the event loop instead, as it is read, on a connection
    of the loop's own: a read of a database in WAL mode never waits for a writer and takes
    about 10 µs, less than the hand-over to the thread and back. That connection never waits
    for a lock either (busy_timeout 0): a request it cannot decide at once (the database is
    busy being checkpointed or recovered, or failing) goes to the thread, which waits and
    reports failures. On PostgreSQL every query is a round trip on the network, which the
    event loop must not wait for: all go to the thread."""

    def __init__(self, engine: Engine, *, in_loop: bool | None = None) -> None:
        self._engine = engine
        self._query = repository.AccessQuery(engine.dialect)
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._in_loop = engine.dialect.name == "sqlite" if in_loop is None else in_loop
        self._here: PoolProxiedConnection | None = None  # the event loop's (SQLite)
        self._connection: PoolProxiedConnection | None = None  # the thread's
        self._queue: queue.SimpleQueue[_Waiting | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.asked = 0
        self.decided_here = 0

    async def check(self, ask: Ask) -> None:
        """Returns if the login may fetch from the release; raises the error to answer."""
        error = self.decide_here(ask)
        if isinstance(error, Later):
            loop = asyncio.get_running_loop()
            future: asyncio.Future[LoaError | None] = loop.create_future()
            if self._thread is None:
                self._start()
            self._queue.put((ask, future, loop))
            error = await future
        if error is not None:
            raise error

    def decide_here(self, ask: Ask) -> LoaError | None | Later:
        """The outcome of ``ask`` decided at once in the calling thread (the event loop), or
        LATER where only the thread may decide it."""
        if not self._in_loop:
            return LATER
        try:
            if self._here is None:
                self._here = self._engine.raw_connection()
                self._here.detach()  # its busy_timeout is never another's: closed, not pooled
                cursor = self._here.cursor()
                cursor.execute("PRAGMA busy_timeout = 0")
                cursor.close()
            error = service.authorize_many(self._query, self._here, [ask])[0]
        except (self._dbapi_error, DBAPIError):  # the driver's, or SQLAlchemy's on connecting
            connection, self._here = self._here, None
            if connection is not None:
                with suppress(Exception):
                    connection.close()
            return LATER
        self.decided_here += 1
        return error

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="download-access", daemon=True)
                self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the thread once the requests already asked are decided."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)
        here, self._here = self._here, None
        if here is not None:
            with suppress(Exception):
                here.close()

    def _serve(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is None:
                    return
                # Those that came while the previous batch was decided: their queries start
                # now, after they arrived.
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        waiting = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if waiting is None:
                        stopping = True
                        break
                    batch.append(waiting)
                try:
                    outcomes: list[LoaError | None] | BaseException = self._decide([ask for ask, _, _ in batch])
                except Exception as exc:  # the database: each request answers with it
                    outcomes = exc
                for loop, answers in _by_loop(batch, outcomes).items():
                    with suppress(RuntimeError):  # that loop is closed: nobody waits any more
                        loop.call_soon_threadsafe(_answer, answers)
        finally:
            self._drop_connection()

    def _decide(self, asks: list[Ask]) -> list[LoaError | None]:
        # One connection, held by this thread: no pool checkout per batch.
        try:
            if self._connection is None:
                self._connection = self._open_own()
            outcomes = service.authorize_many(self._query, self._connection, asks)
            self._connection.rollback()  # none begun: in case a driver began one anyway
        except self._dbapi_error as exc:
            # A broken connection is not used again; the error is SQLAlchemy's, as the API's
            # error handler knows them.
            self._drop_connection(invalidate=True)
            raise DBAPIError.instance(self._query.sql, None, exc, self._dbapi_error) from exc
        except BaseException:
            self._drop_connection(invalidate=True)
            raise
        self.batches += 1
        self.asked += len(asks)
        return outcomes

    def _open_own(self) -> PoolProxiedConnection:
        """The thread's connection, taken out of the pool: it is the thread's for as long as
        it works, in autocommit, so that a batch is its statements' round trip alone (on
        PostgreSQL a transaction's BEGIN and ROLLBACK would be two more). A driver without
        autocommit begins no transaction for a SELECT either (sqlite3)."""
        connection = self._engine.raw_connection()
        connection.detach()
        driver: Any = connection.dbapi_connection
        if hasattr(driver, "autocommit"):
            driver.autocommit = True
        return connection

    def _drop_connection(self, invalidate: bool = False) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(Exception):
                if invalidate:
                    connection.invalidate()
                else:
                    connection.close()


# A request waiting for its answer: the question, where to answer, and its event loop.
_Waiting = tuple[Ask, "asyncio.Future[LoaError | None]", asyncio.AbstractEventLoop]
_Answers = list[tuple["asyncio.Future[LoaError | None]", "LoaError | None | BaseException"]]


def _by_loop(batch: list[_Waiting], outcomes: list[LoaError | None] | BaseException
             ) -> dict[asyncio.AbstractEventLoop, _Answers]:
    """The answers grouped by event loop: one wake-up of each loop per batch."""
    grouped: dict[asyncio.AbstractEventLoop, _Answers] = {}
    for n, (_, future, loop) in enumerate(batch):
        grouped.setdefault(loop, []).append((future, outcomes if isinstance(outcomes, BaseException) else outcomes[n]))
    return grouped


def _answer(answers: _Answers) -> None:
    for future, outcome in answers:
        if future.done():  # the request went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class ReleaseCache:
    """A release's files by id, the least recently served dropped beyond ``max_bytes``."""

    def __init__(self, sessions: sessionmaker[Session], max_bytes: int = CACHE_BYTES) -> None:
        self._sessions = sessions
        self._max_bytes = max_bytes
        self._releases: OrderedDict[int, tuple[ReleaseFiles, int]] = OrderedDict()
        self._bytes = 0
        self._loading: dict[int, asyncio.Task[ReleaseFiles]] = {}

    def kept(self, release_id: int) -> ReleaseFiles | None:
        """The release's files if they are kept (None: ``files`` reads them)."""
        kept = self._releases.get(release_id)
        if kept is None:
            return None
        self._releases.move_to_end(release_id)
        return kept[0]

    async def files(self, release_id: int) -> ReleaseFiles:
        kept = self.kept(release_id)
        if kept is not None:
            return kept
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


class DatabaseUnavailable(Unavailable):
    """The API's answer to a database it cannot reach (fleet_service/errors.py), raised here
    so that the download listener answers it the same."""

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "30"}


def database_unavailable(exc: OperationalError) -> DatabaseUnavailable:
    log.error("database unavailable: %s", exc.orig)
    return DatabaseUnavailable("Cơ sở dữ liệu tạm thời không truy cập được, xin thử lại sau",
                               "The database is unavailable for now; try again later")


@dataclass(frozen=True, slots=True)
class Fetched:
    """A file a receiver may fetch now: whom to count it for, and its SHA-256 and content."""

    receiver_id: str
    release_id: int
    sha256: str
    content: bytes


def _fetched(ask: Ask, files: ReleaseFiles, path: str) -> Fetched:
    sha256, content = service.release_file(files, path)
    return Fetched(ask.receiver_id, ask.release_id, sha256, content)


class Downloads:
    """The three parts, for one app (``app.state.downloads``)."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self.access = AccessChecks(engine)
        self.releases = ReleaseCache(sessions)
        self.served = ServedCounter()

    async def fetch(self, username: str | None, password: str | None, release_id: int, path: str) -> Fetched:
        """The file at ``path`` of a release, for the login given (HTTP Basic), decided by a
        query that started after the request came; raises the error to answer."""
        ask = service.ask(username, password, release_id)
        try:
            await self.access.check(ask)
            files = await self.releases.files(release_id)
        except OperationalError as exc:
            raise database_unavailable(exc) from exc
        return _fetched(ask, files, path)

    def fetch_now(self, username: str | None, password: str | None, release_id: int, path: str) -> Fetched | None:
        """``fetch`` when nothing has to be waited for: on SQLite, whose query runs in the event
        loop, for a release whose files are kept. None: ``fetch`` decides it (nothing was
        asked of the database yet, or the database could not answer at once)."""
        ask = service.ask(username, password, release_id)
        files = self.releases.kept(release_id)
        if files is None:
            return None
        error = self.access.decide_here(ask)
        if isinstance(error, Later):
            return None
        if error is not None:
            raise error
        return _fetched(ask, files, path)

    async def flush(self) -> int:
        """Writes the bytes counted so far; returns how many receivers' rows it wrote."""
        if not self.served.pending():  # idle: no trip to a thread twice a second
            return 0
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
    listener = None
    settings = runtime.settings
    if settings.download_port is not None:
        listener = DownloadListener(downloads, settings.download_host or settings.api_host, settings.download_port)
        await listener.start()
    app.state.download_listener = listener
    flushing = asyncio.create_task(downloads.flush_every(FLUSH_INTERVAL_S))
    try:
        yield
    finally:
        if listener is not None:  # its last answers are counted by the final flush
            await listener.close()
        flushing.cancel()
        with suppress(asyncio.CancelledError):
            await flushing
        await downloads.close()
        await anyio.to_thread.run_sync(downloads.access.close)
