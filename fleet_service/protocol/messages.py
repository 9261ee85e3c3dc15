"""Payloads, as frozen pydantic models. Wire names are short (4G data costs money); the
Python names say what the values are."""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Major protocol version: carried in every payload as "v" and in the topic root (loa/v1).
# Minor, backwards-compatible additions add optional fields; receivers and the service ignore
# fields they do not know, so old and new implementations interoperate within a major version.
PROTOCOL_VERSION = 1

# Every number a payload carries is bounded by what a receiver can really send, so that no
# value, however hostile, overflows anything downstream (datetime arithmetic, database columns,
# InfluxDB fields) after it was accepted. A receiver keeps its counters and clock in unsigned
# 32-bit integers.
UINT32_MAX = 2**32 - 1
# Session counters are unsigned 32-bit on the receiver and persist across reboots.
SESSION_MAX = UINT32_MAX
# Unix seconds, receiver's or service's clock: unsigned 32-bit, which lasts until 2106.
UNIX_TIME_MAX = UINT32_MAX
# Counters that may pass 4 GB in a receiver's life (stream bytes since boot: at 128 kbit/s,
# in three days): the largest integer a JSON number carries exactly (a double's 53 bits).
BIG_COUNTER_MAX = 2**53 - 1


# Each field's wire name is given as validation_alias and serialization_alias rather than as
# alias, which means the same to pydantic: a type checker then takes the Python names (the ones
# the code uses) for the constructor's parameters, as populate_by_name allows.
class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    version: Literal[1] = Field(default=PROTOCOL_VERSION, validation_alias="v", serialization_alias="v")


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
    firmware: str | None = Field(default=None, validation_alias="fw", serialization_alias="fw", max_length=32)
    # Protocol 1.2: the board's hardware family (which releases it can run), e.g. "esp32-a7670".
    hardware: str | None = Field(default=None, validation_alias="hw", serialization_alias="hw", max_length=40,
                                 pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    # On a reconnect birth: seconds, by the receiver's monotonic clock, since it last heard the
    # broker on its previous connection. Lets the ledger record an outage the service could not
    # see itself (the service or the broker was down). Absent after power-on.
    offline_s: float | None = Field(default=None, validation_alias="off", serialization_alias="off", ge=0, le=10 * 365 * 86400, allow_inf_nan=False)


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
    seq: int = Field(ge=0, le=UINT32_MAX, description="report number within the session")
    sent_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX, description="receiver clock, Unix seconds; may be skewed")
    uptime_s: int = Field(validation_alias="up", serialization_alias="up", ge=0, le=UINT32_MAX, description="seconds since boot")
    signal_dbm: int | None = Field(default=None, validation_alias="rssi", serialization_alias="rssi", ge=-140, le=0)
    signal_csq: int | None = Field(default=None, validation_alias="csq", serialization_alias="csq", ge=0, le=99)
    temperature_c: float | None = Field(default=None, validation_alias="temp", serialization_alias="temp", ge=-40, le=125, allow_inf_nan=False)
    supply_v: float | None = Field(default=None, validation_alias="vin", serialization_alias="vin", ge=0, le=60, allow_inf_nan=False)
    amplifier: AmpState = Field(validation_alias="amp", serialization_alias="amp")
    stream: StreamState = Field(validation_alias="st", serialization_alias="st")
    bitrate_kbps: int | None = Field(default=None, validation_alias="kbps", serialization_alias="kbps", ge=0, le=10_000)
    underruns: int = Field(default=0, validation_alias="urun", serialization_alias="urun", ge=0, le=UINT32_MAX, description="since boot")
    free_memory: int | None = Field(default=None, validation_alias="mem", serialization_alias="mem", ge=0, le=UINT32_MAX, description="bytes")
    reset_cause: ResetCause = Field(default=ResetCause.UNKNOWN, validation_alias="rst", serialization_alias="rst")
    firmware: str = Field(validation_alias="fw", serialization_alias="fw", max_length=32)
    # Added in 1.1 (optional: older receivers leave them out).
    stream_bytes: int | None = Field(default=None, validation_alias="sb", serialization_alias="sb", ge=0, le=BIG_COUNTER_MAX,
                                     description="stream bytes received since boot")
    volume: int | None = Field(default=None, validation_alias="vol", serialization_alias="vol", ge=0, le=100)
    schedule_version: int | None = Field(default=None, validation_alias="sched", serialization_alias="sched", ge=0, le=SESSION_MAX)
    clock_skew_ms: int | None = Field(
        default=None, validation_alias="skew", serialization_alias="skew", ge=-(2**31), le=2**31 - 1,
        description="receiver clock minus reference time, measured at the last clock sync")
    clock_synced_s: int | None = Field(
        default=None, validation_alias="sync", serialization_alias="sync", ge=0, le=UINT32_MAX, description="seconds since the last successful clock sync")


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
    # Added in 1.1: playback changes, so that what played while the link was down is
    # reported afterwards (queued on the receiver, sent with their original time), and a
    # command too broken to acknowledge.
    PLAY_STARTED = "play_started"
    PLAY_STOPPED = "play_stopped"
    CLOCK_SYNC = "clock_sync"
    BAD_COMMAND = "bad_command"


class Event(_Message):
    """Something worth telling at once, on ``.../event`` (QoS 1)."""

    session: int = Field(ge=0, le=SESSION_MAX)
    sent_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX)
    kind: EventKind
    # A short code-like detail, not free prose: events are counted and grouped by it.
    detail: str | None = Field(default=None, max_length=120)


# --------------------------------------------------------------------------------------------
# Commands (service -> receiver, ``.../cmd``, QoS 1) and acknowledgements (``.../ack``, QoS 1)
# --------------------------------------------------------------------------------------------

# Commands may be larger than reports: a schedule of 24 slots with long stream URLs.
COMMAND_MAX_BYTES = 8192
# Brackets open at once (outside strings) in a command: a schedule nests three deep, and
# unknown fields of later minor versions get room. Deeper is not a command, on every receiver
# alike, whatever its JSON parser could take.
COMMAND_DEPTH_MAX = 32
# Letters, digits, '-' and '_', like receiver ids: safe in logs, files and topic levels.
_CODE_ID = r"^[A-Za-z0-9_-]+$"
# How many commands a receiver remembers (with their outcome) to never execute one twice.
RECEIVER_REMEMBERS_COMMANDS = 32
URL_MAX = 256
SCHEDULE_MAX_SLOTS = 24
# Slot times are HH:MM, or HH:MM:SS where a programme needs it (and tests need slots seconds
# apart rather than minutes).
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$")
_YYYY_MM_DD = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class Priority(StrEnum):
    """Circular 39/2020/TT-BTTTT: normal bulletins, priority bulletins (first in the
    programme) and emergency bulletins (disaster, fire, epidemic: played immediately)."""

    NORMAL = "normal"
    PRIORITY = "priority"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.NORMAL: 0, Priority.PRIORITY: 1, Priority.EMERGENCY: 2}


class CommandOp(StrEnum):
    PLAY = "play"
    STOP = "stop"
    VOLUME = "volume"
    REBOOT = "reboot"
    CONFIG = "config"
    SCHEDULE = "schedule"
    UPDATE = "update"  # protocol 1.2


def _stream_url(value: str) -> str:
    if not (value.startswith("http://") or value.startswith("https://")) or any(c.isspace() for c in value):
        raise ValueError("stream URL must be http:// or https:// without spaces")
    return value


class _Command(_Message):
    command_id: str = Field(validation_alias="id", serialization_alias="id", min_length=1, max_length=32, pattern=_CODE_ID)
    priority: Priority = Field(default=Priority.NORMAL, validation_alias="pri", serialization_alias="pri")
    issued_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX, description="service clock, Unix seconds")
    expires_at: int = Field(validation_alias="exp", serialization_alias="exp", ge=0, le=UNIX_TIME_MAX, description="service clock, Unix seconds")


class PlayCommand(_Command):
    op: Literal[CommandOp.PLAY] = CommandOp.PLAY
    url: str = Field(max_length=URL_MAX)
    # Stop by itself after this long; absent: play until the stream ends or a stop.
    duration_s: int | None = Field(default=None, validation_alias="dur", serialization_alias="dur", ge=1, le=86400)

    _check_url = field_validator("url")(_stream_url)


class StopCommand(_Command):
    op: Literal[CommandOp.STOP] = CommandOp.STOP


class VolumeCommand(_Command):
    op: Literal[CommandOp.VOLUME] = CommandOp.VOLUME
    volume: int = Field(validation_alias="vol", serialization_alias="vol", ge=0, le=100)


class RebootCommand(_Command):
    op: Literal[CommandOp.REBOOT] = CommandOp.REBOOT


class ReceiverSettings(BaseModel):
    """The settings a config command may change; anything else is rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry_interval: int | None = Field(default=None, ge=10, le=3600)
    keepalive: int | None = Field(default=None, ge=30, le=1200)
    ntp: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.-]+$")


class ConfigCommand(_Command):
    op: Literal[CommandOp.CONFIG] = CommandOp.CONFIG
    settings: ReceiverSettings = Field(validation_alias="set", serialization_alias="set")


class ScheduleSlot(BaseModel):
    """One programme slot, in the station's local time (``tz`` of the schedule)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    slot_id: str = Field(validation_alias="id", serialization_alias="id", min_length=1, max_length=16, pattern=_CODE_ID)
    start: str = Field(validation_alias="s", serialization_alias="s", description="HH:MM or HH:MM:SS, local time")
    end: str = Field(validation_alias="e", serialization_alias="e", description="HH:MM or HH:MM:SS, local time, after start (same day)")
    # Bit 0 is Monday ... bit 6 is Sunday (ISO weekday - 1).
    days: int = Field(default=127, validation_alias="d", serialization_alias="d", ge=1, le=127)
    url: str = Field(validation_alias="u", serialization_alias="u", max_length=URL_MAX)
    priority: Priority = Field(default=Priority.NORMAL, validation_alias="p", serialization_alias="p")
    valid_from: date | None = Field(default=None, validation_alias="f", serialization_alias="f")
    valid_to: date | None = Field(default=None, validation_alias="t", serialization_alias="t")
    volume: int | None = Field(default=None, validation_alias="vol", serialization_alias="vol", ge=0, le=100)

    _check_url = field_validator("url")(_stream_url)

    @field_validator("valid_from", "valid_to", mode="before")
    @classmethod
    def _calendar_date(cls, value: object) -> object:
        # "YYYY-MM-DD" and nothing else: pydantic would also take Unix seconds (0 is 1970-01-01)
        # and date-times at midnight, which a receiver does not. A date the service builds
        # itself (from the schedules table) is a date object, and welcome.
        if value is None or (isinstance(value, date) and not isinstance(value, datetime)):
            return value
        if not (isinstance(value, str) and _YYYY_MM_DD.fullmatch(value)):
            raise ValueError("date must be YYYY-MM-DD")
        return value

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError("time must be HH:MM or HH:MM:SS, 00:00 to 23:59:59")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ScheduleSlot:
        if _to_seconds(self.end) <= _to_seconds(self.start):
            raise ValueError(f"slot {self.slot_id}: end {self.end} is not after start {self.start}"
                             " (split a slot that crosses midnight in two)")
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError(f"slot {self.slot_id}: valid_to is before valid_from")
        return self

    def seconds(self) -> tuple[int, int]:
        """Start and end as seconds after local midnight."""
        return _to_seconds(self.start), _to_seconds(self.end)

    def overlaps(self, other: ScheduleSlot) -> bool:
        """Both can be in force on one day and their times intersect."""
        if not self.days & other.days:
            return False
        lo = max(self.valid_from or date.min, other.valid_from or date.min)
        hi = min(self.valid_to or date.max, other.valid_to or date.max)
        if lo > hi:
            return False
        (a0, a1), (b0, b1) = self.seconds(), other.seconds()
        return a0 < b1 and b0 < a1


def _to_seconds(hhmm: str) -> int:
    return int(hhmm[:2]) * 3600 + int(hhmm[3:5]) * 60 + (int(hhmm[6:8]) if len(hhmm) > 5 else 0)


class ScheduleCommand(_Command):
    """Replaces the receiver's whole schedule (stored on it, run by its own clock)."""

    op: Literal[CommandOp.SCHEDULE] = CommandOp.SCHEDULE
    # Not "version": that is the protocol's own major version ("v"), which every command carries.
    schedule_version: int = Field(validation_alias="ver", serialization_alias="ver", ge=0, le=SESSION_MAX)
    tz_offset_min: int = Field(default=420, validation_alias="tz", serialization_alias="tz", ge=-720, le=840, description="local time = UTC + tz")
    slots: tuple[ScheduleSlot, ...] = Field(default=(), max_length=SCHEDULE_MAX_SLOTS)

    @model_validator(mode="after")
    def _no_overlaps(self) -> ScheduleCommand:
        ids = [slot.slot_id for slot in self.slots]
        if len(set(ids)) != len(ids):
            raise ValueError("slot ids must be unique within a schedule")
        for i, a in enumerate(self.slots):
            for b in self.slots[i + 1:]:
                if a.overlaps(b):
                    raise ValueError(f"slots {a.slot_id} ({a.start}-{a.end}) and {b.slot_id} ({b.start}-{b.end}) overlap")
        return self


# MAJOR.MINOR.PATCH, each 0-9999 without leading zeros: a firmware release's version.
RELEASE_VERSION_PATTERN = r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$"
HARDWARE_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
# A receiver waits a random share of this before it first asks for the release.
UPDATE_JITTER_MAX_S = 3600


class UpdateCommand(_Command):
    """Protocol 1.2: install a signed firmware release (docs/protocol.md, "Firmware updates").
    The receiver fetches ``<url>/manifest.json``, ``<url>/manifest.sig`` and each file named in
    the manifest from ``<url>/<path>``, signed in with its own login."""

    op: Literal[CommandOp.UPDATE] = CommandOp.UPDATE
    release_id: int = Field(validation_alias="rel", serialization_alias="rel", ge=1, le=2**31 - 1)
    release_version: str = Field(validation_alias="ver", serialization_alias="ver", max_length=14,
                                 pattern=RELEASE_VERSION_PATTERN)
    hardware: str = Field(validation_alias="hw", serialization_alias="hw", min_length=1, max_length=40,
                          pattern=HARDWARE_PATTERN)
    url: str = Field(max_length=URL_MAX, description="base URL of the release's files")
    jitter_s: int = Field(default=0, validation_alias="jit", serialization_alias="jit", ge=0, le=UPDATE_JITTER_MAX_S)
    # A release older than the one running is refused unless this is set.
    allow_downgrade: bool = Field(default=False, validation_alias="down", serialization_alias="down")

    _check_url = field_validator("url")(_stream_url)


Command = Annotated[
    PlayCommand | StopCommand | VolumeCommand | RebootCommand | ConfigCommand | ScheduleCommand | UpdateCommand,
    Field(discriminator="op"),
]


class AckStatus(StrEnum):
    ACCEPTED = "accepted"  # received and valid; being carried out
    DONE = "done"          # carried out (play: the stream is playing)
    FAILED = "failed"      # valid, but carrying it out failed (why says how)
    REJECTED = "rejected"  # not carried out: malformed, out of bounds, or outranked
    EXPIRED = "expired"    # arrived after its expiry

    @property
    def final(self) -> bool:
        return self is not AckStatus.ACCEPTED


class AckReason(StrEnum):
    """``why`` codes a receiver uses. Receivers may send others (short codes); these are the
    ones the service explains to people."""

    MALFORMED = "malformed"            # not a valid command (see docs/protocol.md)
    UNKNOWN_OP = "unknown_op"
    VOLUME_RANGE = "volume_range"
    BAD_URL = "bad_url"
    BAD_SCHEDULE = "bad_schedule"
    UNKNOWN_SETTING = "unknown_setting"
    LOWER_PRIORITY = "lower_priority"  # something of higher priority is playing
    EXPIRED = "expired"
    STREAM_UNREACHABLE = "stream_unreachable"
    STREAM_ERROR = "stream_error"
    STORAGE = "storage"                # could not write the config or schedule
    NOTHING_PLAYING = "nothing_playing"  # a stop with nothing to stop (status done)
    INTERRUPTED = "interrupted"        # accepted, then the power went or the board reset (failed)
    # Protocol 1.2, updates (rejected):
    WRONG_HARDWARE = "wrong_hardware"  # the release is for another hardware family
    DOWNGRADE = "downgrade"            # older than the version running, and not allowed
    UPDATE_BUSY = "update_busy"        # another update is under way
    # Protocol 1.2, updates (failed; also the update status's why):
    SIGNATURE = "signature"            # the manifest's signature does not verify
    MANIFEST = "manifest"              # malformed, or not installable here (min_version, bytecode)
    HASH = "hash"                      # a file's length or SHA-256 is not the manifest's
    DOWNLOAD = "download"              # the files could not be fetched (after retries)
    NO_MEMORY = "no_memory"
    ROLLED_BACK = "rolled_back"        # the new version did not confirm; the old one runs again


class Ack(_Message):
    """A receiver's answer to one command. A repeated delivery of a command it already has is
    answered with the same outcome again and ``dup: true``, and never executed twice."""

    session: int = Field(ge=0, le=SESSION_MAX)
    command_id: str = Field(validation_alias="id", serialization_alias="id", min_length=1, max_length=32, pattern=_CODE_ID)
    status: AckStatus = Field(validation_alias="st", serialization_alias="st")
    reason: str | None = Field(default=None, validation_alias="why", serialization_alias="why", max_length=64, pattern=r"^[a-z0-9_:.-]+$")
    sent_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX)
    duplicate: bool = Field(default=False, validation_alias="dup", serialization_alias="dup")


class PlaySource(StrEnum):
    NONE = "none"
    COMMAND = "cmd"
    SCHEDULE = "sched"


class PlayReason(StrEnum):
    """Why the player is in its present state."""

    BOOT = "boot"                # nothing played since boot
    COMMAND = "command"          # a play command started it
    SCHEDULE = "schedule"        # a schedule slot started it
    PREEMPTED = "preempted"      # a higher (or equal, newer) priority took over
    STOPPED = "stopped"          # a stop command
    ENDED = "ended"              # the stream, its duration or its slot ended
    STREAM_ERROR = "stream_error"


class PlayStatus(_Message):
    """Retained on ``.../play``: what the receiver is playing, at which priority, and why.
    Published on every change (not periodically)."""

    session: int = Field(ge=0, le=SESSION_MAX)
    sent_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX)
    stream: StreamState = Field(validation_alias="st", serialization_alias="st")
    priority: Priority | None = Field(default=None, validation_alias="pri", serialization_alias="pri")
    source: PlaySource = Field(default=PlaySource.NONE, validation_alias="src", serialization_alias="src")
    ref: str | None = Field(default=None, max_length=32, pattern=_CODE_ID, description="command id or slot id")
    url: str | None = Field(default=None, max_length=URL_MAX)
    volume: int = Field(validation_alias="vol", serialization_alias="vol", ge=0, le=100)
    why: PlayReason
    schedule_version: int | None = Field(default=None, validation_alias="sched", serialization_alias="sched", ge=0, le=SESSION_MAX)


class UpdateState(StrEnum):
    """Where a receiver's update stands (protocol 1.2). The last three are final."""

    OFFERED = "offered"          # the command is accepted; waiting its jitter before fetching
    DOWNLOADING = "downloading"  # with pct
    DOWNLOADED = "downloaded"    # every file is in the inactive slot
    VERIFIED = "verified"        # lengths and SHA-256 match the signed manifest
    DEFERRED = "deferred"        # verified, waiting for a broadcast to end (why says which)
    INSTALLING = "installing"    # switching the slot on trial
    REBOOTING = "rebooting"      # just before the reset into the new version
    CONFIRMED = "confirmed"      # the new version connected, reported and made itself active
    FAILED = "failed"            # why: signature, manifest, hash, download, storage, no_memory …
    ROLLED_BACK = "rolled_back"  # the new version did not confirm; why: no_connection, crashed …

    @property
    def final(self) -> bool:
        return self in (UpdateState.CONFIRMED, UpdateState.FAILED, UpdateState.ROLLED_BACK)


class UpdateStatus(_Message):
    """Retained on ``.../update`` (protocol 1.2): the receiver's latest update, on every change
    of state and every 10 % of a download."""

    session: int = Field(ge=0, le=SESSION_MAX)
    sent_at: int = Field(validation_alias="ts", serialization_alias="ts", ge=0, le=UNIX_TIME_MAX)
    command_id: str = Field(validation_alias="id", serialization_alias="id", min_length=1, max_length=32, pattern=_CODE_ID)
    release_id: int = Field(validation_alias="rel", serialization_alias="rel", ge=1, le=2**31 - 1)
    release_version: str = Field(validation_alias="ver", serialization_alias="ver", max_length=14,
                                 pattern=RELEASE_VERSION_PATTERN)
    state: UpdateState = Field(validation_alias="st", serialization_alias="st")
    percent: int | None = Field(default=None, validation_alias="pct", serialization_alias="pct", ge=0, le=100)
    reason: str | None = Field(default=None, validation_alias="why", serialization_alias="why", max_length=64,
                               pattern=r"^[a-z0-9_:.-]+$")
    # Bytes fetched for this update so far, resumed requests included (what the 4G link carried).
    fetched: int | None = Field(default=None, validation_alias="got", serialization_alias="got", ge=0,
                                le=BIG_COUNTER_MAX)


def csq_to_dbm(csq: int) -> int | None:
    """3GPP TS 27.007 AT+CSQ: 0 is -113 dBm or less, 31 is -51 dBm or more, 99 is unknown."""
    if csq == 99 or not 0 <= csq <= 31:
        return None
    return -113 + 2 * csq
