"""Grafana's availability panels, run on PostgreSQL against a long random ledger, give the
oracle's figures (tests/fleet_service/uptime/oracle.py), per station and for the whole selection,
for ranges in the past and ranges that reach now (where open intervals end and outages are
ongoing): the panels call the same definition as the API (fleet_service/uptime/availability_sql.py)."""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import insert

from dashboards import connectivity_events, fleet_overview, quarterly_evaluation
from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.migrations import upgrade
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.uptime.availability import Availability, Span
from fleet_service.uptime.models import Connectivity, ConnectivityInterval
from tests.dashboards.grafana_templating import TimeRange, Variable, expand_sql
from tests.fleet_service.uptime.oracle import summarize
from tests.support.postgres import postgres_available, scratch_database

pytestmark = pytest.mark.postgres

STATIONS = 6
RECEIVERS = 12


@dataclass
class RandomLedger:
    dsn: str
    station_names: dict[int, str]
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def random_ledger() -> Iterator[RandomLedger]:
    """Receivers that move between stations, intervals of a microsecond to days, each receiver's
    last interval open, over the 120 days before now."""
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; the test command starts it")
    rng = random.Random(8)
    with scratch_database() as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as s:
            commune = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn"))
            stations = [registry.create_station(s, StationCreate(region_id=commune.id, name=f"Đài {i}"))
                        for i in range(STATIONS)]
            names = {st.id: st.name for st in stations}
            for i in range(RECEIVERS):
                registry.register_receiver(s, ReceiverCreate(id=f"rx-{i}", hardware_id=f"hw-{i}", station_id=stations[0].id))
            rows = []
            now = datetime.now(UTC)
            for i in range(RECEIVERS):
                at = now - timedelta(days=120) + timedelta(microseconds=rng.randrange(20 * 86400 * 10**6))
                while True:
                    end = at + timedelta(microseconds=rng.choice([1, rng.randrange(600 * 10**6), rng.randrange(86400 * 10**6 * 3)]))
                    open_ = end >= now - timedelta(hours=1)
                    rows.append({"receiver_id": f"rx-{i}", "station_id": rng.choice(list(names)), "session": 1,
                                 "state": rng.choice(["online", "online", "offline"]), "start_at": at,
                                 "end_at": None if open_ else end, "start_cause": rng.choice(["birth", "will", "silent"]),
                                 "end_cause": None if open_ else "will"})
                    if open_:
                        break
                    at = end
            s.execute(insert(ConnectivityInterval), rows)
        engine.dispose()
        yield RandomLedger(url.replace("postgresql+psycopg://", "postgresql://", 1), names, rows)


def _run(ledger: RandomLedger, query: str, time_range: TimeRange) -> tuple[list[dict[str, Any]], datetime]:
    """The panel's rows, and the now() it ran with (one transaction: the same instant)."""
    station = Variable("station", "$__all", tuple(str(i) for i in ledger.station_names), True, True)
    with psycopg.connect(ledger.dsn, row_factory=dict_row) as conn:
        now = conn.execute("SELECT now() AT TIME ZONE 'UTC' AS now").fetchone()["now"].replace(tzinfo=UTC)
        return conn.execute(expand_sql(query, time_range, [station])).fetchall(), now


def _figures(ledger: RandomLedger, time_range: TimeRange, now: datetime, stations: list[int]) -> Availability:
    spans = [Span(r["receiver_id"], Connectivity(r["state"]), r["start_at"], r["end_at"])
             for r in ledger.rows if r["station_id"] in stations]
    return summarize(spans, time_range.start, time_range.end, now)


def _ranges() -> list[TimeRange]:
    """Ranges as Grafana sends them (milliseconds): in the past, and reaching now."""
    now = datetime.now(UTC).replace(microsecond=0)
    return [TimeRange(now - timedelta(days=100), now - timedelta(days=10)),
            TimeRange(now - timedelta(days=7, hours=3), now - timedelta(days=6, minutes=7)),
            TimeRange(now - timedelta(days=30), now + timedelta(minutes=5)),
            TimeRange(now - timedelta(days=200), now + timedelta(days=1))]


def _mttr(figures: Availability) -> float | None:
    repaired = [o.duration.total_seconds() for o in figures.outages if not o.ongoing]
    return statistics.fmean(repaired) if repaired else None


@pytest.mark.parametrize("index", range(4))
def test_per_station_panels_equal_the_oracle(random_ledger: RandomLedger, index: int):
    time_range = _ranges()[index]
    per_station, now = _run(random_ledger, quarterly_evaluation.PER_STATION, time_range)
    observed = {name for sid, name in random_ledger.station_names.items()
                if _figures(random_ledger, time_range, now, [sid]).observed > timedelta()}
    assert {r["Trạm / Station"] for r in per_station} == observed and len(observed) >= STATIONS // 2
    for row in per_station:
        sid = next(i for i, name in random_ledger.station_names.items() if name == row["Trạm / Station"])
        f = _figures(random_ledger, time_range, now, [sid])
        assert row["Thiết bị / Receivers"] == f.receivers
        assert row["Hoạt động / Availability"] == pytest.approx(f.online_fraction, abs=1e-12)
        assert row["Số lần mất / Outages"] == len(f.outages)
        assert float(row["Thời gian mất / Downtime"]) == f.downtime.total_seconds()  # exact
        mttr = _mttr(f)
        assert (None if row["MTTR"] is None else float(row["MTTR"])) == (None if mttr is None else pytest.approx(mttr))
        longest = f.longest_outage
        assert (None if row["Lâu nhất / Longest"] is None else float(row["Lâu nhất / Longest"])) == \
            (None if longest is None else longest.duration.total_seconds())
    worst, now = _run(random_ledger, fleet_overview.WORST, time_range)
    for row in worst:
        sid = next(i for i, name in random_ledger.station_names.items() if name == row["Trạm / Station"])
        f = _figures(random_ledger, time_range, now, [sid])
        assert row["Hoạt động / Availability"] == pytest.approx(f.online_fraction, abs=1e-12)
        assert (row["Số lần mất / Outages"], float(row["Thời gian mất / Downtime"])) == (len(f.outages), f.downtime.total_seconds())


@pytest.mark.parametrize("index", range(4))
def test_selection_outage_and_cause_panels_equal_the_oracle(random_ledger: RandomLedger, index: int):
    time_range = _ranges()[index]
    everything = list(random_ledger.station_names)
    [summary], now = _run(random_ledger, quarterly_evaluation.SUMMARY, time_range)
    whole = _figures(random_ledger, time_range, now, everything)
    assert summary["Hoạt động / Availability"] == pytest.approx(whole.online_fraction, abs=1e-12)
    assert summary["Số lần mất / Outages"] == len(whole.outages)
    assert float(summary["MTTR"]) == pytest.approx(_mttr(whole))

    outages, now = _run(random_ledger, quarterly_evaluation.OUTAGES, time_range)
    whole = _figures(random_ledger, time_range, now, everything)
    expected = sorted(whole.outages, key=lambda o: (-o.duration, o.start))[:quarterly_evaluation.OUTAGE_ROWS]
    assert [(r["Thiết bị / Receiver"], r["Bắt đầu / Start"].replace(tzinfo=UTC), float(r["Thời lượng / Duration"]),
             r["Đang diễn ra / Ongoing"]) for r in outages] == \
        [(o.receiver_id, o.start, o.duration.total_seconds(), o.ongoing) for o in expected]
    reaches_now = time_range.end > now
    assert any(o.ongoing for o in whole.outages) == reaches_now  # the ledger ends with open outages

    causes, now = _run(random_ledger, connectivity_events.CAUSES, time_range)
    by_cause: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    # An outage is known by its receiver and clipped start: one interval per receiver overlaps the range's start.
    cause_of = {(r["receiver_id"], max(r["start_at"], time_range.start)): r["start_cause"] for r in random_ledger.rows
                if r["start_at"] < time_range.end and (r["end_at"] is None or r["end_at"] > time_range.start)}
    for outage in _figures(random_ledger, time_range, now, everything).outages:
        by_cause[cause_of[(outage.receiver_id, outage.start)]][0] += 1
        by_cause[cause_of[(outage.receiver_id, outage.start)]][1] += outage.duration.total_seconds()
    assert {r["Nguyên nhân / Cause"]: [r["Số lần / Outages"], float(r["Thời gian mất / Downtime"])] for r in causes} == \
        {k: [v[0], pytest.approx(v[1])] for k, v in by_cause.items()}
