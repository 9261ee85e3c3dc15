"""Telemetry into InfluxDB for a running service: the writer, its disk buffer and the registry
tag cache, started and stopped with the app. Without ``LOA_INFLUX_URL`` nothing is written
and the status says so."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.config import Settings
from fleet_service.protocol.messages import Event, Telemetry
from fleet_service.runtime import Runtime
from fleet_service.telemetry.buffer import DiskBuffer
from fleet_service.telemetry.schemas import TelemetryStatusOut
from fleet_service.telemetry.tags import TagCache
from fleet_service.telemetry.writer import RETRY_MAX_S, InfluxV1Sink, InfluxV2Sink, Sink, TelemetryWriter

log = logging.getLogger(__name__)


def disabled_status(why: str) -> TelemetryStatusOut:
    return TelemetryStatusOut(
        enabled=False,
        message=f"Không ghi số liệu đo vào InfluxDB ({why}) / telemetry is not written to InfluxDB ({why})")


def _public_url(url: str) -> str:
    """The URL without credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"


def make_sink(settings: Settings) -> Sink:
    if settings.influx_api == "v1":
        return InfluxV1Sink(settings.influx_url, settings.influx_token, settings.influx_bucket)
    return InfluxV2Sink(settings.influx_url, settings.influx_token, settings.influx_org, settings.influx_bucket)


class TelemetryService:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session] | None, *,
                 sink: Sink | None = None, retry_max_s: float = RETRY_MAX_S) -> None:
        self.settings = settings
        self.enabled = bool(settings.influx_url)
        self.tags = TagCache(sessions)
        self.writer: TelemetryWriter | None = None
        self._sink = sink
        self._retry_max_s = retry_max_s
        self._tags_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if not self.enabled:
            log.info("LOA_INFLUX_URL is not set: telemetry is not written to InfluxDB")
            return
        s = self.settings
        # Opening the buffer reads what a previous run left (up to the bound): not in the loop.
        buffer = await asyncio.to_thread(DiskBuffer, s.influx_buffer_dir, s.influx_buffer_max_bytes)
        self.writer = TelemetryWriter(self._sink or make_sink(s), buffer, self.tags, batch_size=s.influx_batch_size,
                                      flush_interval_s=s.influx_flush_interval_s, retry_max_s=self._retry_max_s)
        self._tags_task = asyncio.create_task(self.tags.run(), name="telemetry-tags")
        self.writer.start()
        log.info("telemetry to %s (bucket %s); disk buffer %s, bound %d bytes, %d points waiting",
                 _public_url(s.influx_url), s.influx_bucket, s.influx_buffer_dir, s.influx_buffer_max_bytes,
                 buffer.pending_lines)

    async def stop(self) -> None:
        if self._tags_task is not None:
            self._tags_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._tags_task
        if self.writer is not None:
            await asyncio.to_thread(self.writer.stop)

    def submit(self, receiver_id: str, message: Telemetry | Event, received_at: datetime) -> None:
        """For ingest: hand over one decoded telemetry report or event. Never blocks."""
        if self.writer is not None:
            self.writer.submit(receiver_id, message, received_at)

    def status(self) -> TelemetryStatusOut:
        writer = self.writer
        if writer is None:
            return disabled_status("LOA_INFLUX_URL chưa đặt / LOA_INFLUX_URL is not set" if not self.enabled
                                   else "chưa chạy / not started")
        c = writer.counters
        if writer.outage_since is not None:
            message = ("InfluxDB không nhận dữ liệu, đang đệm trên đĩa / InfluxDB is not accepting writes, "
                       "buffering on disk")
        elif writer.buffered_points:
            message = "Đang gửi lại dữ liệu đã đệm / replaying the disk buffer"
        else:
            message = "Đang ghi bình thường / writing normally"
        return TelemetryStatusOut(
            enabled=True, message=message, url=_public_url(self.settings.influx_url), bucket=self.settings.influx_bucket,
            written=c.written, replayed=c.replayed, queued=writer.queued, buffered_points=writer.buffered_points,
            buffered_bytes=writer.buffered_bytes, buffer_max_bytes=writer.buffer.max_bytes,
            dropped_beyond_bound=c.dropped_beyond_bound, dropped_queue_full=c.dropped_queue_full,
            dropped_disk_error=c.dropped_disk_error, rejected=c.rejected, failures=c.failures,
            outage_since=writer.outage_since, last_error=c.last_error, last_error_at=c.last_error_at,
            last_write_at=c.last_write_at, tagged_receivers=len(self.tags), tags_error=self.tags.last_error)


@asynccontextmanager
async def run_telemetry(runtime: Runtime, **options: object) -> AsyncIterator[TelemetryService]:
    """Start telemetry for ``runtime`` (``runtime.telemetry``), stop it afterwards: what is
    queued is written or left on disk for the next start."""
    service = TelemetryService(runtime.settings, runtime.sessions, **options)  # type: ignore[arg-type]
    await service.start()
    runtime.telemetry = service
    try:
        yield service
    finally:
        await service.stop()
