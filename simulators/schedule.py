"""When the slots of a broadcast schedule are in force, by a receiver's own clock.

A schedule's slots are in the station's local time (``tz``, minutes east of UTC); a receiver
knows only its own clock (Unix seconds, possibly skewed). These functions translate between
the two; the receiver arms one timer for the next boundary.
"""

from __future__ import annotations

from datetime import date, timedelta

from fleet_service.protocol import ScheduleCommand, ScheduleSlot

DAY = 86400
_EPOCH = date(1970, 1, 1)
# How far ahead the next boundary is looked for: a week covers every day mask.
_LOOKAHEAD_DAYS = 8


def _in_force(slot: ScheduleSlot, day: date) -> bool:
    if not slot.days & (1 << day.weekday()):
        return False
    return (slot.valid_from is None or slot.valid_from <= day) and (slot.valid_to is None or day <= slot.valid_to)


def active(schedule: ScheduleCommand, clock: float) -> tuple[ScheduleSlot, str, float] | None:
    """The slot in force at ``clock`` (receiver clock, Unix s): (slot, occurrence key, end time
    by the same clock), or None. Slots do not overlap, so at most one is."""
    local = clock + schedule.tz_offset_min * 60
    day_number = int(local // DAY)
    second = local - day_number * DAY
    day = _EPOCH + timedelta(days=day_number)
    for slot in schedule.slots:
        start, end = slot.seconds()
        if start <= second < end and _in_force(slot, day):
            midnight = day_number * DAY - schedule.tz_offset_min * 60
            return slot, f"{slot.slot_id}@{day.isoformat()}", float(midnight + end)
    return None


def next_boundary(schedule: ScheduleCommand, clock: float) -> float | None:
    """The first slot start or end after ``clock`` (receiver clock), or None if there is none
    in the coming week."""
    offset = schedule.tz_offset_min * 60
    today = int((clock + offset) // DAY)
    best: float | None = None
    for k in range(_LOOKAHEAD_DAYS):
        day = _EPOCH + timedelta(days=today + k)
        midnight = (today + k) * DAY - offset
        for slot in schedule.slots:
            if not _in_force(slot, day):
                continue
            for second in slot.seconds():
                t = float(midnight + second)
                if t > clock and (best is None or t < best):
                    best = t
        if best is not None and best < midnight + DAY:
            return best  # later days cannot hold an earlier boundary
    return best
