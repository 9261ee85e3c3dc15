"""The telemetry writer: ingest hands it decoded messages (``submit``, never blocks); a thread
turns them into line protocol, sends them to InfluxDB in batches, and keeps what InfluxDB
cannot take now in the on-disk buffer, replayed in order before newer points.

What the server answers decides what happens to a batch:
  2xx                       written
  400, 413, 422             bad data: logged with the server's message, counted, dropped
                            (InfluxDB has already stored the valid points of a partial write)
  429, 5xx, no answer       the server is away or overloaded: buffered on disk, retried with backoff
  401, 403, 404, other 4xx  wrong token, org, bucket or URL: buffered too, so that fixing the
                            configuration loses nothing (the bound still applies)
"""

from __future__ import annotations

import gzip
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from fleet_service.db import utcnow
from fleet_service.protocol.messages import Event, Telemetry
from fleet_service.telemetry.buffer import DiskBuffer
from fleet_service.telemetry.points import PRECISION, event_line, telemetry_line
from fleet_service.telemetry.tags import TagCache

log = logging.getLogger(__name__)

# Messages waiting in memory for the writer thread. It only waits on InfluxDB for one request
# (HTTP_TIMEOUT_S) before spilling to disk, so this must hold that long of the fleet's
# telemetry: 150,000 receivers reporting every minute (5x the default rate) are 2,500 points/s, 20 s of them is
# 50,000 (~50 MB of decoded messages at worst). Beyond it, new messages are dropped and counted.
QUEUE_MAX = 50_000
# One InfluxDB request may take this long before the server counts as away.
HTTP_TIMEOUT_S = 10.0
# Backoff between attempts while InfluxDB is away: a server coming back is not hammered by
# every service at once, and it is seen within RETRY_MAX_S.
RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
# Replayed from disk per request: about 5,000 points (InfluxDB's advice for a batch).
REPLAY_CHUNK_BYTES = 1024 * 1024
# At most one alert line per this many seconds about dropped points, with the counts.
ALERT_INTERVAL_S = 60.0
# Answers that mean the data itself is bad: sending it again would be refused again.
BAD_DATA_STATUSES = frozenset({400, 413, 422})


class Unavailable(Exception):
    """InfluxDB did not take the batch now; try again later."""


class Rejected(Exception):
    """InfluxDB refused the batch as bad data; sending it again would be refused again."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Sink(Protocol):
    def send(self, lines: bytes) -> None: ...
    def close(self) -> None: ...


def _server_message(body: object) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            text = str(parsed.get("message") or parsed.get("error") or text)
    except ValueError:
        pass
    return text.strip()[:500]


def _classify(status: int, message: str) -> Exception:
    if status in BAD_DATA_STATUSES:
        return Rejected(status, message)
    return Unavailable(f"HTTP {status}: {message}")


class InfluxV2Sink:
    """InfluxDB 2.x / 3.x / 1.8+ (and VictoriaMetrics): ``/api/v2/write`` through influxdb-client,
    gzip on, no retries of its own (the writer decides)."""

    def __init__(self, url: str, token: str, org: str, bucket: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.bucket, self.org = bucket, org
        self._client = InfluxDBClient(url=url, token=token, org=org, enable_gzip=True, timeout=int(timeout_s * 1000))
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def send(self, lines: bytes) -> None:
        try:
            # influxdb_client types the precision as its WritePrecision class, whose values are str.
            self._write_api.write(self.bucket, self.org, record=lines,
                                  write_precision=PRECISION)  # pyright: ignore[reportArgumentType]
        except ApiException as exc:
            raise _classify(exc.status or 0, _server_message(exc.body or exc.reason)) from None
        except Exception as exc:  # urllib3: refused, reset, timed out
            raise Unavailable(f"{exc.__class__.__name__}: {exc}") from None

    def close(self) -> None:
        self._client.close()


class InfluxV1Sink:
    """InfluxDB 1.x before 1.8 (Debian's 1.6), which has no ``/api/v2/write``: ``/write`` with the
    bucket as database, gzip on. influxdb-client speaks only the v2 API, hence httpx here."""

    def __init__(self, url: str, token: str, bucket: str, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
        if token:
            headers["Authorization"] = f"Token {token}"
        self._client = httpx.Client(base_url=url, headers=headers, timeout=timeout_s)
        self._params = {"db": bucket, "precision": "u"}

    def send(self, lines: bytes) -> None:
        try:
            response = self._client.post("/write", params=self._params, content=gzip.compress(lines, 5))
        except httpx.HTTPError as exc:
            raise Unavailable(f"{exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 300:
            raise _classify(response.status_code, _server_message(response.content))

    def close(self) -> None:
        self._client.close()


@dataclass
class WriterCounters:
    written: int = 0              # points InfluxDB accepted (replayed ones included)
    replayed: int = 0             # of which came from the disk buffer
    rejected: int = 0             # points in batches InfluxDB refused as bad data
    dropped_beyond_bound: int = 0  # points deleted from the disk buffer to stay within its bound
    dropped_queue_full: int = 0   # messages dropped because the in-memory queue was full
    dropped_disk_error: int = 0   # points lost because the disk buffer could not be written
    failures: int = 0             # requests that failed (InfluxDB away, overloaded, misconfigured)
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_write_at: datetime | None = None


Item = tuple[str, Telemetry | Event, datetime]


class TelemetryWriter:
    def __init__(self, sink: Sink, buffer: DiskBuffer, tags: TagCache, *, batch_size: int = 5000,
                 flush_interval_s: float = 1.0, queue_max: int = QUEUE_MAX, retry_max_s: float = RETRY_MAX_S) -> None:
        self.sink = sink
        self.buffer = buffer
        self.tags = tags
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_max_s = retry_max_s
        self.counters = WriterCounters()
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=queue_max)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._retry_delay = RETRY_MIN_S
        self._outage_since: datetime | None = None
        self._alerted = (0, 0, 0)
        self._alerted_at = -ALERT_INTERVAL_S
        # Updated by the writer thread only, read by the status endpoint.
        self.buffered_points = buffer.pending_lines
        self.buffered_bytes = buffer.size

    # --- called from ingest (the event loop) ---------------------------------------------------

    def submit(self, receiver_id: str, message: Telemetry | Event, received_at: datetime) -> None:
        """Queue one decoded message. O(1), never blocks, never raises."""
        try:
            self._queue.put_nowait((receiver_id, message, received_at))
        except queue.Full:
            self.counters.dropped_queue_full += 1

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="telemetry-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2 * HTTP_TIMEOUT_S + 5) -> None:
        """Write what is queued (one attempt; what fails stays on disk for the next start)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("telemetry writer did not stop within %.0f s; %d messages still queued",
                          timeout, self._queue.qsize())
        self.sink.close()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def outage_since(self) -> datetime | None:
        return self._outage_since

    def settled(self) -> bool:
        """Everything submitted so far is written, refused or on disk."""
        return self._queue.unfinished_tasks == 0

    def delivered(self) -> bool:
        """Everything submitted so far is written or refused: nothing waits, not even on disk."""
        return self.settled() and self.buffered_points == 0

    # --- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                items = self._collect()
                if items:
                    self._deliver(items)
                if self.buffer and time.monotonic() >= self._retry_at:
                    self._replay()
                self._alert_if_due()
            except Exception:  # a bug must not end telemetry for good; the next round tries again
                log.exception("telemetry writer round failed")
                time.sleep(self.flush_interval_s)
        items = self._take(self._queue.qsize())
        if items:
            self._deliver(items)
        self._alert_if_due(force=True)

    def _collect(self) -> list[Item]:
        """One batch: up to batch_size messages, or what came within flush_interval of the first."""
        try:
            first = self._queue.get(timeout=self.flush_interval_s)
        except queue.Empty:
            return []
        items = [first]
        deadline = time.monotonic() + self.flush_interval_s
        while len(items) < self.batch_size and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                items.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return items

    def _take(self, limit: int) -> list[Item]:
        items: list[Item] = []
        while len(items) < limit:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _encode(self, items: list[Item]) -> tuple[bytes, int]:
        lines = []
        for receiver_id, message, received_at in items:
            station, region = self.tags.tags_of(receiver_id)
            if isinstance(message, Telemetry):
                lines.append(telemetry_line(receiver_id, station, region, message, received_at))
            else:
                lines.append(event_line(receiver_id, station, region, message, received_at))
        return ("\n".join(lines) + "\n").encode(), len(lines)

    def _deliver(self, items: list[Item]) -> None:
        try:
            data, count = self._encode(items)
            # Older points wait on disk (or InfluxDB is away): these go behind them.
            if self.buffer or time.monotonic() < self._retry_at or not self._send(data, count):
                self._spill(data, count)
        finally:
            for _ in items:
                self._queue.task_done()

    def _send(self, data: bytes, count: int) -> bool:
        """True when the batch is done with (written or refused), False to keep it."""
        try:
            self.sink.send(data)
        except Rejected as exc:
            self.counters.rejected += count
            self._error(f"InfluxDB từ chối {count} điểm / refused {count} points ({exc})")
            log.error("InfluxDB refused a batch of %d points as bad data; dropped: %s", count, exc)
            return True
        except Unavailable as exc:
            self.counters.failures += 1
            self._error(f"InfluxDB không nhận dữ liệu / not accepting writes: {exc}")
            if self._outage_since is None:
                self._outage_since = utcnow()
            log.warning("InfluxDB not accepting writes (%s); buffering on disk, next try in %.0f s",
                        exc, self._retry_delay)
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, self.retry_max_s)
            return False
        if self._outage_since is not None:
            log.warning("InfluxDB accepts writes again after an outage since %s; %d points wait on disk",
                        self._outage_since.isoformat(timespec="seconds"), self.buffer.pending_lines)
            self._outage_since = None
        self._retry_delay = RETRY_MIN_S
        self.counters.written += count
        self.counters.last_write_at = utcnow()
        return True

    def _spill(self, data: bytes, count: int) -> None:
        try:
            self.buffer.append(data, count)
        except OSError as exc:
            self.counters.dropped_disk_error += count
            self._error(f"Không ghi được bộ đệm đĩa / disk buffer write failed: {exc}")
            log.error("telemetry disk buffer %s not writable, %d points lost: %s", self.buffer.directory, count, exc)
        self._buffer_changed()

    def _replay(self) -> None:
        """Send the disk buffer oldest first; newer messages meanwhile join its end."""
        while self.buffer and not self._stopping.is_set():
            data, count = self.buffer.peek(REPLAY_CHUNK_BYTES)
            if not self._send(data, count):
                return
            self.buffer.consume(len(data), count)
            self.counters.replayed += count
            items = self._take(self.batch_size)
            if items:
                self._deliver(items)
            self._buffer_changed()

    def _buffer_changed(self) -> None:
        self.counters.dropped_beyond_bound = self.buffer.dropped
        self.buffered_points = self.buffer.pending_lines
        self.buffered_bytes = self.buffer.size

    def _error(self, text: str) -> None:
        self.counters.last_error = text[:600]
        self.counters.last_error_at = utcnow()

    def _alert_if_due(self, force: bool = False) -> None:
        c = self.counters
        totals = (c.dropped_beyond_bound, c.dropped_queue_full, c.dropped_disk_error)
        now = time.monotonic()
        if totals == self._alerted or (not force and now - self._alerted_at < ALERT_INTERVAL_S):
            return
        new = [t - a for t, a in zip(totals, self._alerted, strict=True)]
        log.error("telemetry points dropped: %d beyond the disk buffer bound (%d bytes), %d with the "
                  "in-memory queue full, %d on disk errors (since start: %d, %d, %d)",
                  new[0], self.buffer.max_bytes, new[1], new[2], *totals)
        self._alerted, self._alerted_at = totals, now
