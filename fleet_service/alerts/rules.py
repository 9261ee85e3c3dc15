"""Alert rules: what counts as a fault, how long it must last before a crew is told (pending),
and how long it must have stopped before the incident closes by itself (hold-down).

A rule here is a condition on a receiver's live state (``receiver_live_state``, which the
leading worker keeps within a second of what the receivers say): evaluated again at every turn,
so that a restart of any process forgets nothing and raises nothing twice. The shipped defaults
below apply everywhere; a region may override any of them (``alert_rules``), the nearest region
up the tree winning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any


class RuleKind(StrEnum):
    OFFLINE = "offline"              # not connected for longer than the pending time
    SILENT = "silent"                # connected, but no telemetry for longer than the threshold
    AMP_FAULT = "amp_fault"          # the amplifier reports a fault
    STREAM_ERROR = "stream_error"    # the stream player is in error
    OVERHEAT = "overheat"            # temperature above the threshold
    LOW_SUPPLY = "low_supply"        # supply voltage below the threshold
    WEAK_SIGNAL = "weak_signal"      # 4G signal below the threshold
    CLOCK_UNSYNCED = "clock_unsynced"  # clock off by more than the threshold
    NO_SOUND = "no_sound"            # a scheduled slot is in force and the receiver plays nothing
    UPDATE_FAILED = "update_failed"  # its last firmware update failed or rolled back
    # Over events counted (alerts/counts.py) rather than the live state.
    REBOOTS = "reboots"              # booted at least the threshold's times in the last hour
    UNDERRUNS = "underruns"          # at least the threshold's stream underruns in the last hour
    DATA_BUDGET = "data_budget"      # this month's stream data above the threshold (MB): the SIM's budget
    # Not a rule over receivers: a notification channel that keeps failing (alerts.notify).
    CHANNEL_FAILED = "channel_failed"


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"


@dataclass(frozen=True, slots=True)
class Rule:
    kind: RuleKind
    severity: Severity
    pending_s: int
    hold_s: int
    threshold: float | None = None
    enabled: bool = True
    # A receiver's own incident waits this long past the pending time, in case its neighbours'
    # failures make it part of a group (alerts/evaluator.py): for faults that strike many at once.
    group_wait_s: int = 0

    def with_overrides(self, overrides: dict[str, Any]) -> Rule:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# Shipped defaults. Times are what a crew can act on without being paged by a 4G cell that
# blinks: an offline receiver is told after 5 minutes, and its incident closes once it has been
# back 3 minutes (a link that flaps within that stays one incident).
DEFAULT_RULES: dict[RuleKind, Rule] = {rule.kind: rule for rule in (
    # A commune's power cut is seen receiver by receiver, as the broker's keepalive runs out for
    # each (up to 1.5 keepalives, 90 s with the firmware's 60 s): their own incidents wait that.
    Rule(RuleKind.OFFLINE, Severity.MAJOR, pending_s=300, hold_s=180, group_wait_s=90),
    Rule(RuleKind.SILENT, Severity.MINOR, pending_s=0, hold_s=120, threshold=600, group_wait_s=90),
    Rule(RuleKind.AMP_FAULT, Severity.CRITICAL, pending_s=30, hold_s=120),
    Rule(RuleKind.STREAM_ERROR, Severity.MAJOR, pending_s=120, hold_s=120, group_wait_s=60),
    Rule(RuleKind.OVERHEAT, Severity.MAJOR, pending_s=300, hold_s=300, threshold=70.0),
    Rule(RuleKind.LOW_SUPPLY, Severity.MAJOR, pending_s=300, hold_s=300, threshold=10.5, group_wait_s=60),
    Rule(RuleKind.WEAK_SIGNAL, Severity.MINOR, pending_s=900, hold_s=600, threshold=-105),
    Rule(RuleKind.CLOCK_UNSYNCED, Severity.MINOR, pending_s=600, hold_s=300, threshold=5.0),
    # A slot that should be heard: a minute covers a stream that takes its time to start.
    Rule(RuleKind.NO_SOUND, Severity.CRITICAL, pending_s=60, hold_s=60, group_wait_s=60),
    Rule(RuleKind.UPDATE_FAILED, Severity.MINOR, pending_s=0, hold_s=0),
    # A receiver that keeps resetting: a failing supply, a crash, a modem that hangs. Its
    # incident closes once an hour has passed with fewer boots, and 10 minutes more.
    Rule(RuleKind.REBOOTS, Severity.MAJOR, pending_s=0, hold_s=600, threshold=3),
    # An underrun is a gap the listeners hear (the 8 KiB buffer ran dry): one every two minutes.
    Rule(RuleKind.UNDERRUNS, Severity.MINOR, pending_s=0, hold_s=900, threshold=30),
    # 3 GB: a 64 kbps programme about 4 hours a day. Set each region's SIM plan here.
    Rule(RuleKind.DATA_BUDGET, Severity.MINOR, pending_s=0, hold_s=0, threshold=3000),
)}

# What operators and crews read: Vietnamese first, English alongside; what to check first.
TITLES: dict[RuleKind, tuple[str, str]] = {
    RuleKind.OFFLINE: ("Mất kết nối", "Offline"),
    RuleKind.SILENT: ("Không gửi số liệu", "Connected but silent"),
    RuleKind.AMP_FAULT: ("Lỗi bộ khuếch đại", "Amplifier fault"),
    RuleKind.STREAM_ERROR: ("Lỗi luồng phát", "Stream error"),
    RuleKind.OVERHEAT: ("Quá nhiệt", "Overheating"),
    RuleKind.LOW_SUPPLY: ("Điện áp nguồn thấp", "Low supply voltage"),
    RuleKind.WEAK_SIGNAL: ("Sóng 4G yếu", "Weak 4G signal"),
    RuleKind.CLOCK_UNSYNCED: ("Lệch đồng hồ", "Clock not synchronised"),
    RuleKind.NO_SOUND: ("Không phát trong giờ phát sóng", "No sound during a scheduled slot"),
    RuleKind.UPDATE_FAILED: ("Cập nhật phần mềm lỗi", "Firmware update failed"),
    RuleKind.REBOOTS: ("Khởi động lại nhiều lần", "Repeated reboots"),
    RuleKind.UNDERRUNS: ("Âm thanh bị ngắt quãng", "Stream underruns"),
    RuleKind.DATA_BUDGET: ("Vượt hạn mức dữ liệu 4G trong tháng", "Month's 4G data over budget"),
    RuleKind.CHANNEL_FAILED: ("Kênh thông báo không gửi được", "Notification channel failing"),
}
CHECK_FIRST: dict[RuleKind, tuple[str, str]] = {
    RuleKind.OFFLINE: ("Kiểm tra nguồn điện của trạm và sóng 4G", "Check the station's power and the 4G signal"),
    RuleKind.SILENT: ("Khởi động lại máy thu", "Restart the receiver"),
    RuleKind.AMP_FAULT: ("Kiểm tra bộ khuếch đại, cầu chì và dây loa", "Check the amplifier, its fuse and the speaker lines"),
    RuleKind.STREAM_ERROR: ("Kiểm tra địa chỉ luồng và gói cước 4G", "Check the stream address and the 4G data plan"),
    RuleKind.OVERHEAT: ("Kiểm tra thông gió của tủ thiết bị", "Check the cabinet's ventilation"),
    RuleKind.LOW_SUPPLY: ("Kiểm tra bộ nguồn và ắc quy", "Check the power supply and the battery"),
    RuleKind.WEAK_SIGNAL: ("Kiểm tra ăng-ten 4G", "Check the 4G antenna"),
    RuleKind.CLOCK_UNSYNCED: ("Kiểm tra máy chủ thời gian (NTP)", "Check the time server (NTP)"),
    RuleKind.NO_SOUND: ("Kiểm tra địa chỉ luồng của lịch, gói cước 4G và bộ khuếch đại",
                        "Check the slot's stream address, the 4G data plan and the amplifier"),
    RuleKind.UPDATE_FAILED: ("Xem lý do trong đợt cập nhật (loa rollouts show)",
                             "See the reason in the rollout (loa rollouts show)"),
    RuleKind.REBOOTS: ("Kiểm tra nguồn điện, ắc quy và mô-đun 4G", "Check the power supply, the battery and the 4G modem"),
    RuleKind.UNDERRUNS: ("Kiểm tra sóng 4G và tốc độ luồng phát", "Check the 4G signal and the stream's bit rate"),
    RuleKind.DATA_BUDGET: ("Kiểm tra gói cước SIM và lịch phát", "Check the SIM's data plan and the schedule"),
    RuleKind.CHANNEL_FAILED: ("Kiểm tra địa chỉ và tài khoản của kênh", "Check the channel's address and account"),
}


@dataclass(frozen=True, slots=True)
class LiveRow:
    """What the rules read of one receiver's live state."""

    receiver_id: str
    online: bool
    heard_at: datetime | None
    telemetry_at: datetime | None
    temperature_c: float | None
    supply_v: float | None
    signal_dbm: int | None
    amplifier: str | None
    stream: str | None
    clock_skew_s: float | None
    playing_stream: str | None = None  # its play status (reported on every change)


@dataclass(frozen=True, slots=True)
class Context:
    """What a receiver's rules need beyond its live state, from other tables."""

    offline_since: datetime | None = None
    # The scheduled slot in force now (its id and when this occurrence began), if any.
    slot: tuple[str, datetime] | None = None
    # Its last update's failure (reason and when), if its latest rollout target failed.
    update_failure: tuple[str, datetime] | None = None
    # Counted (alerts/counts.py): boots and underruns in the last hour, stream bytes this month.
    boots: int = 0
    underruns: int = 0
    month_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's condition holds: since when (None: from now) and the value seen."""

    since: datetime | None
    value: float | str | None = None


def _threshold(rule: Rule) -> float:
    assert rule.threshold is not None, f"{rule.kind} needs a threshold"
    return rule.threshold


def _offline(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    if row.online:
        return None
    return Finding(ctx.offline_since or row.heard_at)


def _silent(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    last = row.telemetry_at or row.heard_at
    if not row.online or last is None:
        return None
    if now - last <= timedelta(seconds=_threshold(rule)):
        return None
    return Finding(last + timedelta(seconds=_threshold(rule)), round((now - last).total_seconds()))


def _amp_fault(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    return Finding(None, row.amplifier) if row.online and row.amplifier == "fault" else None


def _stream_error(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    # During a slot, NO_SOUND stands for it: one incident for one cause.
    stream = row.playing_stream or row.stream
    return Finding(None, stream) if row.online and stream == "error" and ctx.slot is None else None


def _overheat(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    t = row.temperature_c
    return Finding(None, t) if row.online and t is not None and t > _threshold(rule) else None


def _low_supply(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    v = row.supply_v
    return Finding(None, v) if row.online and v is not None and v < _threshold(rule) else None


def _weak_signal(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    s = row.signal_dbm
    return Finding(None, s) if row.online and s is not None and s < _threshold(rule) else None


def _clock(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    k = row.clock_skew_s
    return Finding(None, k) if row.online and k is not None and abs(k) > _threshold(rule) else None


# Sound: what it plays (or the player's state in its report, from a receiver that has not sent
# a play status yet).
SOUNDING = ("playing", "buffering")


def _no_sound(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    if ctx.slot is None or not row.online:
        return None
    stream = row.playing_stream or row.stream
    if stream in SOUNDING:
        return None
    slot_id, began = ctx.slot
    return Finding(began, f"{slot_id}: {stream or '?'}")


def _update_failed(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    if ctx.update_failure is None:
        return None
    reason, at = ctx.update_failure
    return Finding(at, reason)


def _reboots(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    return Finding(None, ctx.boots) if ctx.boots >= _threshold(rule) else None


def _underruns(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    return Finding(None, ctx.underruns) if ctx.underruns >= _threshold(rule) else None


MB = 1_000_000


def _data_budget(row: LiveRow, rule: Rule, now: datetime, ctx: Context) -> Finding | None:
    megabytes = ctx.month_bytes / MB
    return Finding(None, f"{megabytes:.0f} MB") if megabytes > _threshold(rule) else None


# An offline receiver reports nothing: only OFFLINE, its last update's failure and what was
# counted hold for it; every other condition waits (its last readings are not news).
CONDITIONS: dict[RuleKind, Callable[[LiveRow, Rule, datetime, Context], Finding | None]] = {
    RuleKind.OFFLINE: _offline,
    RuleKind.SILENT: _silent,
    RuleKind.AMP_FAULT: _amp_fault,
    RuleKind.STREAM_ERROR: _stream_error,
    RuleKind.OVERHEAT: _overheat,
    RuleKind.LOW_SUPPLY: _low_supply,
    RuleKind.WEAK_SIGNAL: _weak_signal,
    RuleKind.CLOCK_UNSYNCED: _clock,
    RuleKind.NO_SOUND: _no_sound,
    RuleKind.UPDATE_FAILED: _update_failed,
    RuleKind.REBOOTS: _reboots,
    RuleKind.UNDERRUNS: _underruns,
    RuleKind.DATA_BUDGET: _data_budget,
}


_NO_CONTEXT = Context()


def evaluate(row: LiveRow, rules: dict[RuleKind, Rule], now: datetime,
             ctx: Context = _NO_CONTEXT) -> dict[RuleKind, Finding]:
    """The enabled rules whose condition holds for ``row`` now."""
    found: dict[RuleKind, Finding] = {}
    for kind, rule in rules.items():
        if not rule.enabled:
            continue
        finding = CONDITIONS[kind](row, rule, now, ctx)
        if finding is not None:
            found[kind] = finding
    return found
