"""Decoded messages as InfluxDB line protocol, in the agreed schema (docs/telemetry.md).

Every field has one fixed type: InfluxDB refuses a point whose field type differs from what
the shard already holds, so an int must never turn into a float because a receiver sent 12
instead of 12.0.

Times are the service's receive time in microseconds (PRECISION). Seconds would do for
telemetry (one report a minute), but not for events: InfluxDB keeps one point per series and
timestamp, and a receiver sends the events it queued while offline all at once after its
birth, so at second precision all but the last of a kind would be overwritten."""

from __future__ import annotations

from datetime import datetime

from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from fleet_service.protocol.messages import AmpState, Event, StreamState, Telemetry

TELEMETRY = "telemetry"
EVENT = "event"
PRECISION = WritePrecision.US
# Tag value for "not known" (line protocol has no empty tag values).
NONE_TAG = "none"

AMPLIFIER_CODES = {AmpState.OFF: 0, AmpState.ON: 1, AmpState.FAULT: 2}
STREAM_CODES = {StreamState.IDLE: 0, StreamState.CONNECTING: 1, StreamState.PLAYING: 2,
                StreamState.BUFFERING: 3, StreamState.ERROR: 4}

# Field name -> (message attribute, type). Only fields present in the message are written.
_TELEMETRY_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("signal_dbm", "signal_dbm", int),
    ("signal_csq", "signal_csq", int),
    ("temperature_c", "temperature_c", float),
    ("supply_v", "supply_v", float),
    ("bitrate_kbps", "bitrate_kbps", int),
    ("underruns", "underruns", int),
    ("stream_bytes", "stream_bytes", int),
    ("free_memory", "free_memory", int),
    ("uptime_s", "uptime_s", int),
    ("volume", "volume", int),
    ("clock_skew_ms", "clock_skew_ms", int),
    ("seq", "seq", int),
    ("session", "session", int),
)


def telemetry_line(receiver_id: str, station: str, region: str, message: Telemetry, received_at: datetime) -> str:
    point = (Point(TELEMETRY).tag("receiver", receiver_id).tag("station", station).tag("region", region)
             .tag("fw", message.firmware or NONE_TAG)
             .field("amplifier", AMPLIFIER_CODES[message.amplifier])
             .field("stream", STREAM_CODES[message.stream])
             # Positive: the report took this long to arrive, or the receiver's clock is behind.
             .field("delay_s", float(received_at.timestamp() - message.sent_at))
             .time(received_at, PRECISION))
    for name, attribute, kind in _TELEMETRY_FIELDS:
        value = getattr(message, attribute)
        if value is not None:
            point.field(name, kind(value))
    return point.to_line_protocol()


def event_line(receiver_id: str, station: str, region: str, message: Event, received_at: datetime) -> str:
    return (Point(EVENT).tag("receiver", receiver_id).tag("station", station).tag("region", region)
            .tag("kind", message.kind.value)
            .field("detail", message.detail or "").field("count", 1)
            .time(received_at, PRECISION)).to_line_protocol()
