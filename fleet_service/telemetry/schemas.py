from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class TelemetryStatusOut(BaseModel):
    enabled: bool = Field(description="false when LOA_INFLUX_URL is not set: telemetry is not written")
    message: str = Field(description="one line for people, Vietnamese / English")
    url: str | None = None
    bucket: str | None = None
    written: int = Field(default=0, description="points InfluxDB accepted since start (replayed ones included)")
    replayed: int = Field(default=0, description="of which came from the disk buffer")
    queued: int = Field(default=0, description="messages waiting in memory now")
    buffered_points: int = Field(default=0, description="points waiting in the disk buffer now")
    buffered_bytes: int = Field(default=0, description="bytes the disk buffer holds now")
    buffer_max_bytes: int = 0
    dropped_beyond_bound: int = Field(default=0, description="points deleted (oldest first) to keep the disk buffer within its bound")
    dropped_queue_full: int = Field(default=0, description="messages dropped because the in-memory queue was full")
    dropped_disk_error: int = Field(default=0, description="points lost because the disk buffer could not be written")
    rejected: int = Field(default=0, description="points in batches InfluxDB refused as bad data (4xx)")
    failures: int = Field(default=0, description="write requests that failed since start")
    outage_since: datetime | None = Field(default=None, description="InfluxDB has not accepted writes since then (UTC)")
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_write_at: datetime | None = None
    tagged_receivers: int = Field(default=0, description="receivers whose station and region tags are cached")
    tags_error: str | None = Field(default=None, description="why the last refresh of the tags from the registry failed")
