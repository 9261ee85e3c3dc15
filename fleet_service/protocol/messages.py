"""Payloads, as frozen pydantic models. Wire names are short (4G data costs money); the
Python names say what the values are."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# Major protocol version: carried in every payload as "v" and in the topic root (loa/v1).
# Minor, backwards-compatible additions add optional fields; receivers and the service ignore
# fields they do not know, so old and new implementations interoperate within a major version.
PROTOCOL_VERSION = 1

# Session counters are unsigned 32-bit on the receiver and persist across reboots.
SESSION_MAX = 2**32 - 1


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    version: Literal[1] = Field(default=PROTOCOL_VERSION, alias="v")


class State(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class StateReason(StrEnum):
    BOOT = "boot"            # birth after power-on or reset
    RECONNECT = "reconnect"  # birth after the link or broker came back
    SHUTDOWN = "shutdown"    # clean goodbye before a planned stop or reboot
    LOST = "lost"            # the Last Will, published by the broker


class StateMessage(_Message):
    """Retained on ``.../state``. The birth and the Last Will of one MQTT connection carry the
    same session counter, so a Will that arrives late from an older connection can be told
    apart from the death of the current one."""

    state: State
    session: int = Field(ge=0, le=SESSION_MAX)
    reason: StateReason
    firmware: str | None = Field(default=None, alias="fw", max_length=32)
    # On a reconnect birth: seconds, by the receiver's monotonic clock, since it last heard the
    # broker on its previous connection. Lets the ledger record an outage the service could not
    # see itself (the service or the broker was down). Absent after power-on.
    offline_s: float | None = Field(default=None, alias="off", ge=0, le=10 * 365 * 86400)


class ResetCause(StrEnum):
    POWER_ON = "power_on"
    HARD = "hard"
    WATCHDOG = "watchdog"
    DEEPSLEEP = "deepsleep"
    SOFT = "soft"
    BROWNOUT = "brownout"
    UNKNOWN = "unknown"


class AmpState(StrEnum):
    ON = "on"
    OFF = "off"
    FAULT = "fault"


class StreamState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    PLAYING = "playing"
    BUFFERING = "buffering"
    ERROR = "error"


class Telemetry(_Message):
    """Periodic report on ``.../telemetry`` (QoS 0: a lost report is replaced by the next)."""

    session: int = Field(ge=0, le=SESSION_MAX)
    seq: int = Field(ge=0, le=SESSION_MAX, description="report number within the session")
    sent_at: int = Field(alias="ts", ge=0, description="receiver clock, Unix seconds; may be skewed")
    uptime_s: int = Field(alias="up", ge=0, description="seconds since boot")
    signal_dbm: int | None = Field(default=None, alias="rssi", ge=-140, le=0)
    signal_csq: int | None = Field(default=None, alias="csq", ge=0, le=99)
    temperature_c: float | None = Field(default=None, alias="temp", ge=-40, le=125)
    supply_v: float | None = Field(default=None, alias="vin", ge=0, le=60)
    amplifier: AmpState = Field(alias="amp")
    stream: StreamState = Field(alias="st")
    bitrate_kbps: int | None = Field(default=None, alias="kbps", ge=0, le=10_000)
    underruns: int = Field(default=0, alias="urun", ge=0, description="since boot")
    free_memory: int | None = Field(default=None, alias="mem", ge=0, description="bytes")
    reset_cause: ResetCause = Field(default=ResetCause.UNKNOWN, alias="rst")
    firmware: str = Field(alias="fw", max_length=32)


class EventKind(StrEnum):
    BOOT = "boot"
    AMP_FAULT = "amp_fault"
    AMP_RECOVERED = "amp_recovered"
    STREAM_ERROR = "stream_error"
    STREAM_RECOVERED = "stream_recovered"
    LINK_LOST = "link_lost"
    LOW_SUPPLY = "low_supply"
    OVERHEAT = "overheat"
    MODEM_RESET = "modem_reset"


class Event(_Message):
    """Something worth telling at once, on ``.../event`` (QoS 1)."""

    session: int = Field(ge=0, le=SESSION_MAX)
    sent_at: int = Field(alias="ts", ge=0)
    kind: EventKind
    # A short code-like detail, not free prose: events are counted and grouped by it.
    detail: str | None = Field(default=None, max_length=120)


def csq_to_dbm(csq: int) -> int | None:
    """3GPP TS 27.007 AT+CSQ: 0 is -113 dBm or less, 31 is -51 dBm or more, 99 is unknown."""
    if csq == 99 or not 0 <= csq <= 31:
        return None
    return -113 + 2 * csq
