"""A rollout's rules, decided when it is created and applied by the worker that drives it:
which receivers go in which wave, when the next wave may start and when the rollout stops by
itself, the maintenance window, and how fast offers go out. No database and no clock of its
own: the service and the worker hand it what they read, so each rule is tested alone."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum

from fleet_service.errors import Invalid
from fleet_service.protocol.messages import ScheduleSlot
from fleet_service.timefmt import LOCAL_ZONE

MAX_WAVES = 20
_WAVE_RE = re.compile(r"^\s*(\d{1,6})\s*(%?)\s*$")
ALL_DAYS = 0b1111111  # bit 0 Monday ... bit 6 Sunday, as schedule slots count them


# --- waves ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WaveSize:
    """A wave of ``count`` receivers, or of ``percent`` of the rollout's receivers."""

    count: int | None = None
    percent: int | None = None

    def of(self, total: int) -> int:
        if self.count is not None:
            return self.count
        assert self.percent is not None
        return max(1, math.ceil(total * self.percent / 100))

    def __str__(self) -> str:
        return f"{self.percent}%" if self.percent is not None else str(self.count)


def parse_waves(spec: Sequence[str]) -> list[WaveSize]:
    """``["3", "10%", "100%"]``: a canary of 3, then 10 % of the receivers, then the rest. The
    last wave always takes whatever is left, whatever its size says."""
    if not spec:
        raise Invalid("Cần ít nhất một đợt", "at least one wave is needed")
    if len(spec) > MAX_WAVES:
        raise Invalid(f"Tối đa {MAX_WAVES} đợt", f"at most {MAX_WAVES} waves")
    waves = []
    for text in spec:
        match = _WAVE_RE.match(text)
        if match is None:
            raise Invalid(f"Đợt '{text[:20]}' phải là một số máy (ví dụ 5) hoặc phần trăm (ví dụ 10%)",
                          f"wave '{text[:20]}' must be a number of receivers (e.g. 5) or a percentage (e.g. 10%)")
        value = int(match.group(1))
        if match.group(2):
            if not 1 <= value <= 100:
                raise Invalid(f"Đợt '{text}': phần trăm phải từ 1 đến 100", f"wave '{text}': a percentage is 1 to 100")
            waves.append(WaveSize(percent=value))
        else:
            if value < 1:
                raise Invalid(f"Đợt '{text}': cần ít nhất 1 máy", f"wave '{text}': at least 1 receiver")
            waves.append(WaveSize(count=value))
    return waves


def assign_waves(targets: Iterable[tuple[str, int | None]], waves: Sequence[WaveSize]) -> list[list[str]]:
    """The receivers (id, station) of each wave, in order; waves that would be empty are left
    out. Receivers are taken station by station in turn, so that a canary of a few spans
    several stations (and a fault of one station's site does not pass for the firmware's)."""
    by_station: dict[int | None, list[str]] = {}
    for receiver_id, station_id in sorted(targets, key=lambda t: (t[1] is None, t[1] or 0, t[0])):
        by_station.setdefault(station_id, []).append(receiver_id)
    order: list[str] = []
    queues = list(by_station.values())
    depth = 0
    while len(order) < sum(len(q) for q in queues):
        order.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    total = len(order)
    planned: list[list[str]] = []
    taken = 0
    for index, wave in enumerate(waves):
        if taken >= total:
            break
        size = total - taken if index == len(waves) - 1 else min(wave.of(total), total - taken)
        planned.append(order[taken:taken + size])
        taken += size
    return planned


# --- thresholds -----------------------------------------------------------------------------

class Outcome(StrEnum):
    """Where one receiver's update stands, as far as the thresholds care."""

    WAITING = "waiting"      # not offered yet, or offered and not finished
    CONFIRMED = "confirmed"  # the new version connected and confirmed itself
    FAILED = "failed"        # failed, rolled back, or timed out


@dataclass(frozen=True, slots=True)
class Thresholds:
    # The share (%) of a wave confirmed before the next wave starts.
    success_percent: int = 90
    # The share (%) of a wave's finished receivers that failed, beyond which the rollout pauses.
    error_percent: int = 20
    # No decision on a share of fewer finished receivers than this (or than the wave holds).
    min_finished: int = 5

    def check(self) -> Thresholds:
        if not 1 <= self.success_percent <= 100:
            raise Invalid("Ngưỡng thành công phải từ 1 đến 100 %", "the success threshold is 1 to 100 %")
        if not 0 <= self.error_percent <= 100:
            raise Invalid("Ngưỡng lỗi phải từ 0 đến 100 %", "the error threshold is 0 to 100 %")
        if self.min_finished < 1:
            raise Invalid("Số máy tối thiểu để xét ngưỡng phải từ 1", "the minimum finished before thresholds apply is at least 1")
        return self


@dataclass(frozen=True, slots=True)
class WaveTally:
    size: int
    confirmed: int
    failed: int

    @property
    def finished(self) -> int:
        return self.confirmed + self.failed


class Verdict(StrEnum):
    CONTINUE = "continue"    # keep going with this wave
    NEXT_WAVE = "next_wave"  # enough confirmed: the next wave may start
    PAUSE = "pause"          # too many failed: the rollout pauses by itself


def judge(tally: WaveTally, thresholds: Thresholds) -> Verdict:
    """The error threshold is judged first: a wave that passed the success threshold and then
    kept failing still pauses the rollout."""
    enough = min(thresholds.min_finished, tally.size)
    if tally.finished >= enough and tally.failed * 100 > thresholds.error_percent * tally.finished:
        return Verdict.PAUSE
    if tally.confirmed * 100 >= thresholds.success_percent * tally.size:
        return Verdict.NEXT_WAVE
    return Verdict.CONTINUE


# --- the maintenance window ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Window:
    """Local time (Asia/Ho_Chi_Minh) when receivers may install: from ``start`` to ``end`` on
    the ``days`` it starts (bit 0 Monday); an ``end`` not after ``start`` is on the next day
    (22:00–04:00). None on a rollout: any time."""

    start: time
    end: time
    days: int = ALL_DAYS

    @classmethod
    def parse(cls, start: str, end: str, days: int = ALL_DAYS) -> Window:
        try:
            window = cls(time.fromisoformat(start), time.fromisoformat(end), days)
        except ValueError:
            raise Invalid(f"Khung giờ bảo trì '{start[:10]}–{end[:10]}' phải dạng HH:MM",
                          f"maintenance window '{start[:10]}–{end[:10]}' must be HH:MM") from None
        if not 1 <= days <= ALL_DAYS:
            raise Invalid("Ngày trong tuần của khung giờ không hợp lệ", "the window's days of the week are not valid")
        if window.start == window.end:
            raise Invalid("Khung giờ bảo trì phải dài hơn 0 phút", "the maintenance window must be longer than zero")
        return window

    def _parts(self) -> list[tuple[int, int, int]]:
        """(days, start s, end s) within one local day each."""
        start, end = _seconds(self.start), _seconds(self.end)
        if end > start:
            return [(self.days, start, end)]
        parts = [(self.days, start, 86_400)]
        if end > 0:
            parts.append((_next_days(self.days), 0, end))
        return parts

    def contains(self, at: datetime) -> bool:
        local = at.astimezone(LOCAL_ZONE)
        day = 1 << local.weekday()
        now = local.hour * 3600 + local.minute * 60 + local.second
        return any(days & day and start <= now < end for days, start, end in self._parts())

    def next_opening(self, at: datetime) -> datetime:
        """The next time at or after ``at`` inside the window (``at`` itself when inside)."""
        if self.contains(at):
            return at
        local = at.astimezone(LOCAL_ZONE).replace(microsecond=0)
        midnight = local.replace(hour=0, minute=0, second=0)
        for offset in range(8):
            day = midnight + timedelta(days=offset)
            for days, start, _ in sorted(self._parts(), key=lambda p: p[1]):
                opening = day + timedelta(seconds=start)
                if days & (1 << day.weekday()) and opening >= local:
                    return opening
        raise AssertionError("a window with a day of the week opens within a week")

    def clashes(self, slots: Iterable[ScheduleSlot]) -> list[ScheduleSlot]:
        """The slots that the window overlaps on some day: a rollout must not install while a
        station's programme plays."""
        found = []
        for slot in slots:
            slot_start, slot_end = slot.seconds()
            if any(days & slot.days and start < slot_end and slot_start < end for days, start, end in self._parts()):
                found.append(slot)
        return found

    def __str__(self) -> str:
        return f"{self.start.strftime('%H:%M')}–{self.end.strftime('%H:%M')}"


def _seconds(value: time) -> int:
    return value.hour * 3600 + value.minute * 60 + value.second


def _next_days(days: int) -> int:
    """The days after each of ``days`` (Sunday's next is Monday)."""
    return ((days << 1) | (days >> 6)) & ALL_DAYS


# --- pacing ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pace:
    """At most ``per_minute`` offers a minute; each receiver also waits a random share of
    ``jitter_s`` before it starts downloading, so that one minute's offers do not all download
    in the same second."""

    per_minute: int = 60
    jitter_s: int = 30

    def check(self) -> Pace:
        if not 1 <= self.per_minute <= 100_000:
            raise Invalid("Tốc độ cập nhật phải từ 1 đến 100.000 máy mỗi phút", "the rate is 1 to 100,000 receivers a minute")
        if not 0 <= self.jitter_s <= 3600:
            raise Invalid("Độ trễ ngẫu nhiên phải từ 0 đến 3600 giây", "the jitter is 0 to 3600 s")
        return self

    def allowed(self, started: datetime, now: datetime, offered: int) -> int:
        """How many more may be offered now, ``offered`` having been since ``started``: one at
        once, then one every 60 / ``per_minute`` seconds."""
        elapsed_min = max(0.0, (now - started).total_seconds() / 60)
        return max(0, 1 + math.floor(elapsed_min * self.per_minute) - offered)
