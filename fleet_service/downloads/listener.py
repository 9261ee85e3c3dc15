"""The download listener: ``GET`` and ``HEAD /api/v1/firmware/download/{release}/{path}`` on a
port of its own (``LOA_DOWNLOAD_PORT``), in each API process, answered as the API's route
answers them (docs/firmware-updates.md, "The download endpoint").

Why it is written by hand: a rollout's receivers each fetch a release of tens of files of a few
KiB, so downloads are many small requests. FastAPI, Starlette and uvicorn spend 0.5–1 ms of CPU
on each, around some tens of µs of work of its own (the access query, the bytes). No maintained
library serves bytes from memory behind a per-request database check with less: static file
servers cannot ask the database, and Python's HTTP servers are ASGI stacks with those same
costs. So this is the least HTTP/1.1 that receivers need, on asyncio's Protocol, with httptools
(uvicorn's C parser) reading requests: GET and HEAD of one path, kept-alive connections,
pipelined requests answered in order (after ``MAX_PIPELINED`` read ahead the connection closes
once they are answered, which RFC 9112 clients retry), and bounds on what a slow or hostile
client can hold (the limits below). What it answers is decided by ``Downloads.fetch`` and
answers.py, which the API's route uses too: the same checks per request, nothing cached, the
same statuses, headers and bilingual errors, the same counts.

One listener per process, bound without SO_REUSEPORT: a second process started on a port in
use fails to start instead of silently sharing it. Several API processes on one machine each
take a port of their own, as their API ports do, behind the site's proxy.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import suppress
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, cast
from urllib.parse import unquote

import httptools

from fleet_service.db import ID_MAX
from fleet_service.downloads.answers import DOWNLOAD_PATH, ERROR_TYPE, FILE_TYPE, basic_login, error_json, file_part
from fleet_service.errors import Invalid, LoaError, NotFound

if TYPE_CHECKING:
    from fleet_service.downloads.serving import Downloads, Fetched

log = logging.getLogger(__name__)

# A download URL is under 200 bytes; uvicorn and nginx take a few KiB of request line.
MAX_URL_BYTES = 2048
# Request line and headers together, and how many headers: a receiver sends about 200 bytes
# in 4 headers. Larger is refused (431) and the connection closed.
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 64
# A GET carries no body; a larger one than this is refused (413) without being read.
MAX_BODY_BYTES = 16 * 1024
# Requests read ahead of their answers on one connection (pipelining).
MAX_PIPELINED = 16
# Between two requests: a receiver checks a file's SHA-256 and writes it to flash before it
# asks for the next one, over a 4G link with seconds of latency at worst.
IDLE_TIMEOUT_S = 30.0
# From a request's first byte to its last: a slow client does not hold a connection forever.
REQUEST_TIMEOUT_S = 20.0
# A client that takes none of an answer's bytes for this long is cut (nginx's send_timeout).
SEND_TIMEOUT_S = 60.0
# How often the timeouts are looked at (their precision) and the Date header renewed.
SWEEP_INTERVAL_S = 1.0
# Larger bodies are handed to the connection in pieces as the client takes them.
CHUNK_BYTES = 64 * 1024
# Connections waiting to be accepted: receivers come back together after a power cut.
BACKLOG = 1024
# Connections open at once, at most (and half the process's file descriptors at most, so that
# a flood of them leaves the API its own): a province's receivers, with room to spare. One
# more is closed as soon as it is accepted, and its receiver tries again later.
MAX_CONNECTIONS = 4000


class BadRequest(LoaError):
    status_code = 400
    code = "bad_request"


class TooLarge(LoaError):
    status_code = 413
    code = "too_large"


class TooSlow(LoaError):
    status_code = 408
    code = "timeout"


class MethodNotAllowed(LoaError):
    status_code = 405
    code = "method_not_allowed"

    def headers(self) -> dict[str, str] | None:
        return {"Allow": "GET, HEAD"}


class Internal(LoaError):
    status_code = 500
    code = "internal"


def _bad_request() -> BadRequest:
    return BadRequest("Yêu cầu không đọc được", "The request could not be read")


class _Refused(Exception):
    """Raised by a parser callback to stop reading: the request is answered with ``error``."""

    def __init__(self, status: int, error: LoaError | None) -> None:
        self.status = status
        self.error = error  # None: stop reading, answer nothing more


class _Request:
    """One request as read: only what the answer depends on."""

    __slots__ = ("method", "url", "authorization", "range", "if_range", "keep_alive", "http10", "refused", "decided")

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.authorization: str | None = None
        self.range: str | None = None
        self.if_range: str | None = None
        self.keep_alive = False
        self.http10 = False
        self.refused: _Refused | None = None
        self.decided: Fetched | LoaError | None = None  # decided as it was read, not yet written


def download_target(url: bytes) -> tuple[int, str]:
    """(release id, file path) of a request's URL, as the API's route reads its path."""
    try:
        path = httptools.parse_url(url).path.decode("ascii")
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        raise _bad_request() from None
    if "%" in path:
        path = unquote(path)
    release, slash, file_path = path[len(DOWNLOAD_PATH):].partition("/")
    if not path.startswith(DOWNLOAD_PATH) or not slash:
        raise NotFound(f"Không có đường dẫn {path[:200]}", f"There is no path {path[:200]}")
    if not (release.isascii() and release.isdigit() and 1 <= int(release) <= ID_MAX):
        raise Invalid(f"Tham số đường dẫn release_id phải là số nguyên từ 1 đến {ID_MAX}",
                      f"path parameter release_id must be an integer from 1 to {ID_MAX}")
    return int(release), file_path


def _head(status: int, date: str, content_type: str, length: int, headers: Iterable[tuple[str, str]],
          keep_alive: bool, http10: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"date: {date}", f"content-type: {content_type}",
             f"content-length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if not keep_alive:
        lines.append("connection: close")
    elif http10:
        lines.append("connection: keep-alive")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Connection(asyncio.Protocol):
    """One client's connection: requests read by httptools' callbacks (on_…) and answered in
    order, each at once when nothing has to be waited for, else queued and answered by one
    task at a time."""

    def __init__(self, listener: DownloadListener) -> None:
        self._listener = listener
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[_Request] = deque()
        self._answering: asyncio.Task[None] | None = None
        self._reading = True  # False once a request ends the connection: what follows is not read
        self._request: _Request | None = None  # being read
        self._in_head = False
        self._head_bytes = self._headers = self._body_bytes = 0
        self._drained: asyncio.Future[None] | None = None  # while the client takes too little
        self.request_since: float | None = None  # the request being read: when it began
        self.paused_since: float | None = None
        self.last = listener.now  # when the last answer was written (or the connection made)

    # --- asyncio's side ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if len(self._listener.connections) >= self._listener.max_connections:
            self._reading = False
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:  # an answer is written at once, not held for the next one
            with suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.connections.discard(self)
        self._reading = False
        self._queue.clear()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.paused_since = self._listener.now
        self._drained = self._listener.loop.create_future()

    def resume_writing(self) -> None:
        self.paused_since = None
        self._wake_writer()

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._reading:
            return
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request is answered, with no upgrade: what follows it is no HTTP/1.1 of ours.
            self._reading = False
            if self._answering is None and not self._queue and self._transport is not None:
                self._transport.close()  # answered already
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refused):
                raise
            if cause.error is not None:
                self._refuse(cause)
        except httptools.HttpParserError:
            self._refuse(_Refused(400, _bad_request()))
        else:
            # A head that goes on over several reads: bounds what httptools gathers meanwhile.
            if in_head and self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(_too_large_head())

    def _refuse(self, refused: _Refused) -> None:
        """Answers ``refused`` after the requests already read, then closes the connection."""
        self._reading = False
        request = _Request()
        request.refused = refused
        self._enqueue(request)

    # --- httptools' callbacks ---

    def on_message_begin(self) -> None:
        if not self._reading:  # the rest of a read after a request that ends the connection
            raise _Refused(0, None)
        self._request = _Request()
        self._in_head = True
        self._head_bytes = self._headers = self._body_bytes = 0
        self.request_since = self._listener.now

    def on_url(self, url: bytes) -> None:
        assert self._request is not None
        self._request.url += url
        self._head_bytes += len(url)
        if len(self._request.url) > MAX_URL_BYTES:
            raise _Refused(414, TooLarge("Đường dẫn quá dài", "The URL is too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._request is not None
        self._headers += 1
        self._head_bytes += len(name) + len(value) + 4
        if self._headers > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            raise _too_large_head()
        name = name.lower()
        request = self._request
        # The first of a header sent twice counts, as with the API's route.
        if name == b"authorization" and request.authorization is None:
            request.authorization = value.decode("latin-1")
        elif name == b"range" and request.range is None:
            request.range = value.decode("latin-1")
        elif name == b"if-range" and request.if_range is None:
            request.if_range = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._request is not None
        self._in_head = False
        self._request.method = self._parser.get_method()
        self._request.keep_alive = self._parser.should_keep_alive()
        self._request.http10 = self._parser.get_http_version() == "1.0"

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _Refused(413, TooLarge(f"Dữ liệu gửi lên quá lớn: tối đa {MAX_BODY_BYTES} byte",
                                         f"The request body is too large: at most {MAX_BODY_BYTES} bytes"))

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        assert request is not None
        self.request_since = None
        if not request.keep_alive or len(self._queue) + 1 >= MAX_PIPELINED:
            self._reading = False
        self._enqueue(request)

    # --- answers ---

    def _enqueue(self, request: _Request) -> None:
        # Most requests are answered here and now, without a task: nothing answered before
        # them is still being written, and the answer needs no waiting (Downloads.fetch_now).
        transport = self._transport
        if (self._answering is None and not self._queue and self._drained is None and request.refused is None
                and transport is not None and not transport.is_closing()):
            try:
                decided = self._decide_now(request)
            except Exception:  # the task decides it again, and answers what went wrong
                log.exception("firmware download: unexpected error")
                decided = None
            if decided is not None:
                keep_alive = self._keeps_alive(request)
                head, body, count = self._answer_of(request, decided, keep_alive)
                if len(body) <= CHUNK_BYTES:
                    self._send(head, body, count)
                    self._answered(keep_alive)
                    return
                request.decided = decided  # a large body: the task writes it as it is taken
        self._queue.append(request)
        if self._answering is None:
            self._answering = self._listener.loop.create_task(self._answer_queued())

    def _keeps_alive(self, request: _Request) -> bool:
        # The last request read on a connection that reads no more closes it.
        return request.keep_alive and request.refused is None and (self._reading or bool(self._queue))

    def _answered(self, keep_alive: bool) -> None:
        self.last = self._listener.now
        if not keep_alive and self._transport is not None:
            self._transport.close()  # once what was written is sent

    async def _answer_queued(self) -> None:
        transport = self._transport
        assert transport is not None
        try:
            while self._queue and not transport.is_closing():
                request = self._queue.popleft()
                keep_alive = self._keeps_alive(request)
                try:
                    await self._answer(request, keep_alive)
                except Exception:
                    log.exception("firmware download: unexpected error")
                    keep_alive = False
                    await self._write(*self._answer_of(request, Internal(
                        "Lỗi không mong đợi ở máy chủ; đã ghi nhật ký", "Unexpected server error; it has been logged"),
                        keep_alive))
                self._answered(keep_alive)
                if not keep_alive:
                    return
            if not self._reading:
                transport.close()
        finally:
            self._answering = None

    async def _answer(self, request: _Request, keep_alive: bool) -> None:
        refused = request.refused
        if refused is not None:
            if refused.error is not None:
                await self._write(*self._answer_of(request, refused.error, keep_alive, refused.status))
            return
        decided = request.decided
        if decided is None:
            try:
                decided = await self._listener.downloads.fetch(*self._question(request))
            except LoaError as error:
                decided = error
        await self._write(*self._answer_of(request, decided, keep_alive))

    def _decide_now(self, request: _Request) -> Fetched | LoaError | None:
        """What ``request`` is answered, if it can be decided without waiting."""
        try:
            return self._listener.downloads.fetch_now(*self._question(request))
        except LoaError as error:
            return error

    def _question(self, request: _Request) -> tuple[str | None, str | None, int, str]:
        """(user name, password, release id, file path) of a request for a file; raises the
        error to answer one that is none."""
        if request.method not in (b"GET", b"HEAD"):
            method, path = request.method.decode("latin-1")[:16], request.url.decode("latin-1")[:200]
            raise MethodNotAllowed(f"Đường dẫn {path} không nhận phương thức {method} (dùng: GET, HEAD)",
                                   f"{path} does not accept the {method} method (use: GET, HEAD)")
        release_id, path = download_target(request.url)
        return *basic_login(request.authorization), release_id, path

    def _answer_of(self, request: _Request, decided: Fetched | LoaError, keep_alive: bool, status: int | None = None
                   ) -> tuple[bytes, bytes | memoryview, Callable[[int], None] | None]:
        """The head, the body and how to count it (files only) of an answer."""
        date, head_only = self._listener.date, request.method == b"HEAD"
        if isinstance(decided, LoaError):
            body = error_json(decided)
            head = _head(status or decided.status_code, date, ERROR_TYPE, len(body), (decided.headers() or {}).items(),
                         keep_alive, request.http10)
            return head, b"" if head_only else body, None
        part = file_part(decided.sha256, len(decided.content), request.range, request.if_range)
        head = _head(part.status, date, FILE_TYPE, part.end - part.first, part.headers, keep_alive, request.http10)
        served, receiver_id, release_id = self._listener.downloads.served, decided.receiver_id, decided.release_id

        def count(sent: int) -> None:
            try:
                served.add(receiver_id, release_id, sent)
            except Exception:  # the count is lost, the download is not
                log.exception("could not count %d bytes of firmware served", sent)

        return head, b"" if head_only else memoryview(decided.content)[part.first:part.end], count

    def _send(self, head: bytes, body: bytes | memoryview, count: Callable[[int], None] | None) -> None:
        """Hands a whole answer to the connection (the count before the bytes: a client that
        has them all finds them counted)."""
        if count is not None:
            count(len(body))
        assert self._transport is not None
        self._transport.write(head + body)

    async def _write(self, head: bytes, body: bytes | memoryview, count: Callable[[int], None] | None) -> None:
        """Hands the answer to the connection as the client takes it. ``count`` is told the
        body bytes handed over, before the last of them. Nothing is written, nor counted, to
        a connection lost meanwhile."""
        transport = self._transport
        assert transport is not None
        if self._drained is not None:
            await self._drained
        if transport.is_closing():
            return
        if len(body) <= CHUNK_BYTES:
            self._send(head, body, count)
            return
        transport.write(head)
        sent = 0
        for offset in range(0, len(body), CHUNK_BYTES):
            if self._drained is not None:
                await self._drained
            if transport.is_closing():
                break
            chunk = body[offset:offset + CHUNK_BYTES]
            sent += len(chunk)
            if sent == len(body) and count is not None:
                count(sent)
                count = None
            transport.write(chunk)
        if count is not None:
            count(sent)

    # --- timeouts ---

    def sweep(self, now: float) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self.paused_since is not None and now - self.paused_since > SEND_TIMEOUT_S:
            transport.abort()
        elif self.request_since is not None and now - self.request_since > REQUEST_TIMEOUT_S:
            self.request_since = None
            self._refuse(_Refused(408, TooSlow("Yêu cầu đến quá chậm", "The request took too long to arrive")))
        elif self.request_since is None and self._answering is None and now - self.last > IDLE_TIMEOUT_S:
            transport.close()

    def shut(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
        if self._transport is not None:
            self._transport.close()


def _too_large_head() -> _Refused:
    return _Refused(431, TooLarge("Tiêu đề yêu cầu quá lớn", "The request's headers are too large"))


class DownloadListener:
    """The listener of one process, started and closed by the downloads' lifespan."""

    def __init__(self, downloads: Downloads, host: str, port: int) -> None:
        self.downloads = downloads
        self._host, self.port = host, port
        self.connections: set[_Connection] = set()
        self.max_connections = min(MAX_CONNECTIONS, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 2)
        self.loop: asyncio.AbstractEventLoop  # set by start
        self.now = 0.0
        self.date = ""
        self._server: asyncio.Server | None = None
        self._sweeping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._tick()
        self._server = await self.loop.create_server(lambda: _Connection(self), self._host or None, self.port,
                                                     backlog=BACKLOG)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeping = asyncio.create_task(self._sweep())
        log.info("firmware downloads on %s:%d", self._host or "*", self.port)

    def _tick(self) -> None:
        self.now = self.loop.time()
        self.date = formatdate(usegmt=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self._tick()
            for connection in list(self.connections):
                connection.sweep(self.now)

    async def close(self) -> None:
        """Stops taking connections and closes those open (an answer being written is cut)."""
        if self._server is None:
            return
        self._server.close()
        if self._sweeping is not None:
            self._sweeping.cancel()
            with suppress(asyncio.CancelledError):
                await self._sweeping
        for connection in list(self.connections):
            connection.shut()
        await self._server.wait_closed()
        self._server = None
