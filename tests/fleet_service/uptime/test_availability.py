from datetime import UTC, datetime, timedelta

import pytest

from fleet_service.uptime.availability import Span
from fleet_service.uptime.models import Connectivity
from tests.fleet_service.uptime.oracle import summarize

T0 = datetime(2026, 4, 1, tzinfo=UTC)
ON, OFF = Connectivity.ONLINE, Connectivity.OFFLINE


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_clips_to_window_and_counts_outages():
    spans = [
        Span("a", ON, at(-5), at(2)),
        Span("a", OFF, at(2), at(3)),     # 1 h outage
        Span("a", ON, at(3), at(9)),
        Span("a", OFF, at(9), at(12)),    # 3 h, clipped to 1 h by the window end
        Span("a", ON, at(12), None),
    ]
    a = summarize(spans, at(0), at(10), now=at(20))
    assert a.observed == timedelta(hours=10)
    assert a.online == timedelta(hours=8)
    assert a.online_fraction == pytest.approx(0.8)
    assert [o.duration for o in a.outages] == [timedelta(hours=1), timedelta(hours=1)]
    assert a.longest_outage.start == at(2)


def test_time_before_first_seen_is_not_service_life():
    a = summarize([Span("a", ON, at(5), None)], at(0), at(10), now=at(10))
    assert a.observed == timedelta(hours=5)
    assert a.online_fraction == 1.0


def test_open_outage_is_ongoing_and_ends_now():
    a = summarize([Span("a", ON, at(0), at(1)), Span("a", OFF, at(1), None)], at(0), at(10), now=at(4))
    [outage] = a.outages
    assert outage.ongoing and outage.end == at(4)
    assert a.observed == timedelta(hours=4)


def test_several_receivers_weigh_by_observed_time():
    spans = [Span("a", ON, at(0), None), Span("b", OFF, at(0), at(5)), Span("b", ON, at(5), None)]
    a = summarize(spans, at(0), at(10), now=at(10))
    assert a.receivers == 2
    assert a.online_fraction == pytest.approx(15 / 20)


def test_empty_period_is_refused():
    with pytest.raises(ValueError):
        summarize([], at(1), at(1), now=at(2))


def test_no_data_has_no_fraction():
    assert summarize([], at(0), at(1), now=at(2)).online_fraction is None
