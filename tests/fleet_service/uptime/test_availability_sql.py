"""The one SQL definition of availability (fleet_service/uptime/availability_sql.py) gives the
oracle's answers (tests/fleet_service/uptime/oracle.py) for any ledger, period and "now", on
SQLite (the text as a subquery) and on PostgreSQL (the functions the migration installed), per
receiver, station and region; and the functions in PostgreSQL are the code's definition."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, text

from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.uptime import availability_sql
from fleet_service.uptime.availability import Availability, Span
from fleet_service.uptime.availability_sql import Period
from fleet_service.uptime.models import Connectivity, ConnectivityInterval
from tests.fleet_service.uptime.oracle import summarize

T0 = datetime(2026, 7, 1, tzinfo=UTC)
RECEIVERS = ("r-0", "r-1", "r-2", "r-3")


@dataclass
class Fleet:
    sessions: Any
    dialect: str
    stations: list[int]            # a1, a2 (commune A), b1 (commune B)
    region_of: dict[int, str]      # station id -> its commune's path
    paths: dict[str, str]          # "district", "a", "b" -> path


@pytest.fixture
def fleet(db_url: str) -> Iterator[Fleet]:
    engine = make_engine(db_url)
    sessions = make_sessionmaker(engine)
    with session_scope(sessions) as s:
        district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
        a = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn", parent_id=district.id))
        b = registry.create_region(s, RegionCreate(name="Quân Chu", level="thị trấn", parent_id=district.id))
        stations = [registry.create_station(s, StationCreate(region_id=region.id, name=name))
                    for region, name in ((a, "Đài A1"), (a, "Đài A2"), (b, "Đài B1"))]
        for rid in RECEIVERS:
            registry.register_receiver(s, ReceiverCreate(id=rid, hardware_id=f"hw-{rid}", station_id=stations[0].id))
        region_of = {st_.id: (a.path if st_.region_id == a.id else b.path) for st_ in stations}
        fleet = Fleet(sessions, engine.dialect.name, [st_.id for st_ in stations], region_of,
                      {"district": district.path, "a": a.path, "b": b.path})
    try:
        yield fleet
    finally:
        engine.dispose()


def _write(fleet: Fleet, rows: list[dict[str, Any]]) -> None:
    with session_scope(fleet.sessions) as s:
        s.execute(delete(ConnectivityInterval))
        if rows:
            s.execute(insert(ConnectivityInterval), rows)


def _spans(rows: list[dict[str, Any]]) -> list[tuple[Span, int | None]]:
    return [(Span(r["receiver_id"], Connectivity(r["state"]), r["start_at"], r["end_at"]), r["station_id"]) for r in rows]


def _assert_equal_to_oracle(fleet: Fleet, rows: list[dict[str, Any]], period: Period) -> int:
    """Every receiver, station and region: the SQL's answer is the oracle's, exactly. Returns
    how many of them had something observed (so that a test can tell it compared figures)."""
    spans = _spans(rows)
    scopes: list[tuple[dict[str, Any], list[Span]]] = []
    for rid in RECEIVERS:
        scopes.append(({"receiver_id": rid}, [sp for sp, _ in spans if sp.receiver_id == rid]))
    for sid in fleet.stations:
        scopes.append(({"station_id": sid}, [sp for sp, station in spans if station == sid]))
    for name, path in fleet.paths.items():
        inside = {sid for sid, commune in fleet.region_of.items() if name == "district" or commune == path}
        scopes.append(({"region_path": path}, [sp for sp, station in spans if station in inside]))
    seen = 0
    with session_scope(fleet.sessions) as s:
        for scope, chosen in scopes:
            expected = summarize(chosen, period.start, period.end, period.now)
            got = availability_sql.availability(s, period, **scope)
            assert got == expected, (scope, period)
            seen += expected.observed > timedelta()
    return seen


# --- any ledger -------------------------------------------------------------------------------

# Times on a coarse grid (so that boundaries often coincide: an interval starting exactly at the
# period's start, ending exactly now) plus, often, a microsecond offset (exactness).
_MINUTE_US = 60_000_000
moments = st.builds(lambda minutes, us: T0 + timedelta(microseconds=minutes * _MINUTE_US + us),
                    st.integers(0, 60), st.one_of(st.just(0), st.integers(0, _MINUTE_US - 1)))
durations = st.one_of(st.just(0), st.integers(1, 3).map(lambda m: m * _MINUTE_US),
                      st.integers(0, 20 * _MINUTE_US))


@st.composite
def ledgers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Each receiver's history as the ledger writer leaves it: contiguous intervals from when it
    was first seen (some of zero length), at most the last one open, each with the station it
    served then (or none)."""
    rows = []
    for rid in RECEIVERS:
        count = draw(st.integers(0, 6))
        at = draw(moments)
        for i in range(count):
            last = i == count - 1
            end = None if last and draw(st.booleans()) else at + timedelta(microseconds=draw(durations))
            rows.append({"receiver_id": rid, "station_id": draw(st.sampled_from([0, 1, 2, None])),
                         "state": draw(st.sampled_from(["online", "offline"])), "session": 1, "start_at": at,
                         "end_at": end, "start_cause": "birth", "end_cause": None if end is None else "will"})
            at = end if end is not None else at
    return rows


@st.composite
def periods(draw: st.DrawFn) -> Period:
    start, end = sorted(draw(st.lists(moments, min_size=2, max_size=2, unique=True)))
    # "now" often exactly at the period's end (the end left out), where "ongoing" is decided.
    return Period(start, end, draw(st.one_of(moments, st.just(end))))


def _with_stations(fleet: Fleet, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "station_id": None if r["station_id"] is None else fleet.stations[r["station_id"]]} for r in rows]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ledger=ledgers(), period=periods())
def test_sql_equals_the_oracle_for_any_ledger(fleet: Fleet, ledger: list[dict[str, Any]], period: Period):
    rows = _with_stations(fleet, ledger)
    _write(fleet, rows)
    _assert_equal_to_oracle(fleet, rows, period)


def test_a_long_random_ledger_over_many_periods(fleet: Fleet):
    """Thousands of intervals with microsecond boundaries, periods of every length, "now" at the
    period's end, inside it, and after the whole ledger."""
    rng = random.Random(20261203)
    rows = []
    for rid in RECEIVERS:
        at = T0 + timedelta(microseconds=rng.randrange(10**12))
        for i in range(600):
            end = None if i == 599 else at + timedelta(microseconds=rng.choice([0, rng.randrange(3 * 10**9),
                                                                                 rng.randrange(2 * 10**11)]))
            rows.append({"receiver_id": rid, "station_id": rng.choice([*fleet.stations, None]), "session": 1,
                         "state": rng.choice(["online", "offline"]), "start_at": at, "end_at": end,
                         "start_cause": "birth", "end_cause": None if end is None else "will"})
            at = end if end is not None else at
    _write(fleet, rows)
    last = max(r["start_at"] for r in rows)
    observed = 0
    for _ in range(25):
        a, b = sorted(T0 + timedelta(microseconds=rng.randrange(int((last - T0).total_seconds() * 1.2e6)))
                      for _ in range(2))
        now = rng.choice([b, a + (b - a) / 2, last + timedelta(days=1)])
        observed += _assert_equal_to_oracle(fleet, rows, Period(a, b, now))
    assert observed > 100  # the periods really covered the ledger


def test_an_open_outage_runs_to_now_and_is_ongoing_only_when_the_period_reaches_now(fleet: Fleet):
    now = T0 + timedelta(hours=5)
    rows = [{"receiver_id": "r-0", "station_id": fleet.stations[0], "state": "online", "session": 1,
             "start_at": T0 + timedelta(hours=1), "end_at": T0 + timedelta(hours=2), "start_cause": "birth",
             "end_cause": "will"},
            {"receiver_id": "r-0", "station_id": fleet.stations[0], "state": "offline", "session": 1,
             "start_at": T0 + timedelta(hours=2), "end_at": None, "start_cause": "will", "end_cause": None}]
    _write(fleet, rows)
    with session_scope(fleet.sessions) as s:
        to_now = availability_sql.availability(s, Period(T0, now, now), receiver_id="r-0")
        past = availability_sql.availability(s, Period(T0, now - timedelta(hours=1), now), receiver_id="r-0")
        future = availability_sql.availability(s, Period(T0, now + timedelta(hours=3), now), receiver_id="r-0")
    # Observed from first seen (01:00), not from the period's start.
    assert (to_now.observed, to_now.online) == (timedelta(hours=4), timedelta(hours=1))
    assert [(o.end, o.ongoing) for o in to_now.outages] == [(now, True)]
    assert [(o.end, o.ongoing) for o in past.outages] == [(now - timedelta(hours=1), False)]
    # Nothing is counted past now.
    assert future.observed == to_now.observed and future.outages == to_now.outages
    assert to_now == _oracle(rows, to_now)


def _oracle(rows: list[dict[str, Any]], got: Availability) -> Availability:
    return summarize([sp for sp, _ in _spans(rows)], got.start, got.end, T0 + timedelta(hours=5))


# --- the functions in PostgreSQL ----------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_installed_functions_are_the_code_s_definition(fleet: Fleet):
    """A change to the definition without a migration that replaces the functions fails here."""
    with session_scope(fleet.sessions) as s:
        installed = dict(s.execute(text(
            "SELECT proname, prosrc FROM pg_proc WHERE proname IN ('loa_ledger_spans', 'loa_availability')")).all())
        results = dict(s.execute(text("SELECT proname, pg_get_function_result(oid) FROM pg_proc "
                                      "WHERE proname IN ('loa_ledger_spans', 'loa_availability')")).all())
    assert installed["loa_ledger_spans"].strip() == availability_sql.spans_sql("postgresql")
    assert installed["loa_availability"].strip() == availability_sql.availability_sql("postgresql")
    for name, columns in (("loa_ledger_spans", availability_sql.SPAN_COLUMNS),
                          ("loa_availability", availability_sql.AVAILABILITY_COLUMNS)):
        declared = [part.split()[0] for part in results[name].removeprefix("TABLE(").removesuffix(")").split(", ")]
        assert declared == [c[0] for c in columns]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_postgresql_inlines_the_functions_so_a_station_filter_reaches_the_index(fleet: Fleet):
    with session_scope(fleet.sessions) as s:
        s.execute(text("SET LOCAL enable_seqscan = off"))
        plan = "\n".join(s.scalars(text(
            "EXPLAIN SELECT * FROM loa_availability(now() AT TIME ZONE 'UTC' - interval '1 day', "
            "now() AT TIME ZONE 'UTC') WHERE station_id = 1")).all())
    assert "Function Scan" not in plan, plan
    assert "ix_connectivity_station_start" in plan, plan


def test_a_period_with_nothing_observed_has_no_fraction(fleet: Fleet):
    _write(fleet, [])
    with session_scope(fleet.sessions) as s:
        got = availability_sql.availability(s, Period(T0, T0 + timedelta(hours=1), T0), region_path=fleet.paths["district"])
    assert got == Availability(T0, T0 + timedelta(hours=1), timedelta(), timedelta(), [], 0)
    assert got.online_fraction is None
