"""A rollout's rules alone (fleet_service/rollouts/plan.py): waves, thresholds, the maintenance
window against a station's slots, and pacing."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_service.errors import Invalid
from fleet_service.protocol.messages import ScheduleSlot
from fleet_service.rollouts.plan import (
    Pace,
    Thresholds,
    Verdict,
    WaveSize,
    WaveTally,
    Window,
    assign_waves,
    judge,
    parse_waves,
)

# 2026-12-07 is a Monday; Asia/Ho_Chi_Minh is UTC+7.
MONDAY = datetime(2026, 12, 7, tzinfo=UTC) - timedelta(hours=7)  # Monday 00:00 local


def local(day: int, hh: int, mm: int = 0) -> datetime:
    """Local time on the day'th day of that week (0 Monday), as UTC."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm)


def test_waves_are_parsed_from_counts_and_percentages():
    assert parse_waves(["3", "10%", "100%"]) == [WaveSize(count=3), WaveSize(percent=10), WaveSize(percent=100)]
    for bad in ([], ["0"], ["101%"], ["ten"], ["5%%"], ["-1"], ["1"] * 21):
        with pytest.raises(Invalid):
            parse_waves(bad)


def test_a_canary_spans_stations_and_the_last_wave_takes_the_rest():
    targets = [(f"s{station}-{n}", station) for station in range(4) for n in range(5)]  # 4 stations × 5
    waves = assign_waves(targets, parse_waves(["4", "50%", "1"]))
    assert [len(w) for w in waves] == [4, 10, 6]
    assert {rid.split("-")[0] for rid in waves[0]} == {"s0", "s1", "s2", "s3"}
    assert sorted(sum(waves, [])) == sorted(rid for rid, _ in targets)


def test_waves_that_would_be_empty_are_left_out():
    assert assign_waves([("a", 1), ("b", 1)], parse_waves(["5", "10%", "100%"])) == [["a", "b"]]
    assert assign_waves([], parse_waves(["5"])) == []


@given(st.lists(st.tuples(st.text(min_size=1, max_size=4), st.none() | st.integers(0, 5)),
                unique_by=lambda t: t[0], max_size=60),
       st.lists(st.one_of(st.integers(1, 30).map(str), st.integers(1, 100).map(lambda p: f"{p}%")),
                min_size=1, max_size=6))
def test_every_receiver_is_in_exactly_one_wave(targets, spec):
    waves = assign_waves(targets, parse_waves(spec))
    placed = Counter(rid for wave in waves for rid in wave)
    assert placed == Counter(rid for rid, _ in targets)
    assert all(waves) and len(waves) <= len(spec)


def test_the_error_threshold_pauses_only_once_enough_have_finished():
    thresholds = Thresholds(success_percent=90, error_percent=20, min_finished=5)
    assert judge(WaveTally(size=50, confirmed=0, failed=4), thresholds) is Verdict.CONTINUE  # 4 < 5 finished
    assert judge(WaveTally(size=50, confirmed=1, failed=4), thresholds) is Verdict.PAUSE     # 80 % of 5 failed
    assert judge(WaveTally(size=50, confirmed=4, failed=1), thresholds) is Verdict.CONTINUE  # 20 %: not beyond
    # A canary smaller than min_finished is judged once all of it finished.
    assert judge(WaveTally(size=2, confirmed=1, failed=1), thresholds) is Verdict.PAUSE


def test_the_next_wave_starts_at_the_success_threshold_unless_failures_pass_theirs():
    thresholds = Thresholds(success_percent=90, error_percent=5, min_finished=5)
    assert judge(WaveTally(size=10, confirmed=8, failed=0), thresholds) is Verdict.CONTINUE
    assert judge(WaveTally(size=10, confirmed=9, failed=0), thresholds) is Verdict.NEXT_WAVE
    assert judge(WaveTally(size=10, confirmed=9, failed=1), thresholds) is Verdict.PAUSE


def test_thresholds_out_of_range_are_refused():
    for bad in (Thresholds(success_percent=0), Thresholds(error_percent=101), Thresholds(min_finished=0)):
        with pytest.raises(Invalid):
            bad.check()


def test_a_window_across_midnight_belongs_to_the_day_it_starts():
    window = Window.parse("22:00", "04:00", days=0b0000001)  # Monday night
    assert window.contains(local(0, 23))
    assert window.contains(local(1, 3, 59))      # Tuesday 03:59, still Monday's window
    assert not window.contains(local(1, 4))
    assert not window.contains(local(1, 23))     # Tuesday night is not in it
    assert not window.contains(local(0, 3))      # Monday early morning is Sunday's window
    assert window.next_opening(local(0, 12)) == local(0, 22)
    assert window.next_opening(local(1, 5)) == local(7, 22)  # next Monday
    assert window.next_opening(local(0, 23)) == local(0, 23)


def test_a_window_refuses_nonsense():
    for args in (("25:00", "01:00"), ("01:00", "01:00"), ("aa", "01:00")):
        with pytest.raises(Invalid):
            Window.parse(*args)
    with pytest.raises(Invalid):
        Window.parse("01:00", "02:00", days=0)


def slot(start: str, end: str, days: int = 127) -> ScheduleSlot:
    return ScheduleSlot(id=f"{start.replace(':', '')}-{days}", s=start, e=end, d=days, u="http://stream.example/live.mp3")


def test_a_window_clashes_with_the_slots_it_overlaps_on_some_day():
    morning, evening = slot("05:30", "06:30"), slot("17:00", "18:00")
    sunday_early = slot("02:00", "03:00", days=0b1000000)
    monday_early = slot("02:00", "03:00", days=0b0000001)
    window = Window.parse("22:00", "04:00", days=0b1000000)  # Sunday night into Monday
    assert window.clashes([morning, evening, sunday_early, monday_early]) == [monday_early]
    assert Window.parse("06:30", "17:00").clashes([morning, evening]) == []  # touching is not overlapping
    assert Window.parse("06:00", "07:00").clashes([morning, evening]) == [morning]


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59), st.integers(1, 127),
       st.integers(0, 7 * 24 * 60 - 1))
def test_contains_agrees_with_the_window_walked_minute_by_minute(h0, m0, h1, m1, days, minute):
    if (h0, m0) == (h1, m1):
        return
    window = Window(time(h0, m0), time(h1, m1), days)
    at = MONDAY + timedelta(minutes=minute)
    # The oracle: walk back from ``at`` to the last opening and see whether it has closed since.
    start, end = h0 * 60 + m0, h1 * 60 + m1
    length = end - start if end > start else end + 24 * 60 - start
    inside = False
    for back in range(length):
        t = minute - back
        if t % (24 * 60) == start and days & (1 << ((t // (24 * 60)) % 7)):
            inside = True
            break
    assert window.contains(at) is inside


def test_offers_are_paced_one_at_once_then_evenly():
    pace = Pace(per_minute=30).check()
    t0 = local(0, 12)
    assert pace.allowed(t0, t0, offered=0) == 1
    assert pace.allowed(t0, t0, offered=1) == 0
    assert pace.allowed(t0, t0 + timedelta(seconds=10), offered=1) == 5
    assert pace.allowed(t0, t0 + timedelta(minutes=2), offered=10) == 51
    with pytest.raises(Invalid):
        Pace(per_minute=0).check()
