"""Every panel's every query, run against real servers with Grafana's templating reproduced
(tests/dashboards/grafana_templating.py), must return what the data says it should: the
PostgreSQL panels what the availability oracle (tests/fleet_service/uptime/oracle.py) computes
from the same ledger, the InfluxQL panels what the telemetry written says. A query that fails or returns nothing fails its panel; so does
a panel with no expectation here."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import select

import dashboards
from dashboards import alerts, connectivity_events, firmware, fleet_overview, quarterly_evaluation, station_detail
from fleet_service.alerts.rules import TITLES
from fleet_service.db import session_scope
from fleet_service.uptime.availability import Availability, Span
from fleet_service.uptime.models import Connectivity, ConnectivityInterval
from fleet_service.uptime.repository import LedgerRepository
from tests.dashboards import fleet_data
from tests.dashboards.conftest import INFLUX_DATABASE, LedgerDatabase, TelemetryDatabase
from tests.dashboards.grafana_templating import (TimeRange, Variable, expand_influxql, expand_sql, interval_ms,
                                                 unexpanded)
from tests.fleet_service.uptime.oracle import summarize

pytestmark = pytest.mark.postgres

QUARTER = TimeRange(fleet_data.QUARTER_START, fleet_data.QUARTER_END)
# The day of telemetry, plus the hour before it (the previous calendar day in Vietnam).
DAY = TimeRange(fleet_data.DAY_START - timedelta(hours=1), fleet_data.DAY_START + timedelta(days=1))
STATION = "Đài An Khánh"  # the station the single-station dashboard is looked at with
MODELS = dashboards.render_all()


@dataclass
class Run:
    """What one panel returned: per target, SQL rows (dicts) or InfluxQL series."""
    panel: dict[str, Any]
    results: list[list[dict[str, Any]]]
    time_range: TimeRange
    station_ids: list[int]
    ledger: LedgerDatabase
    telemetry: TelemetryDatabase | None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.results[0]

    @property
    def interval_s(self) -> int:
        return interval_ms(self.time_range, self.panel["maxDataPoints"], self.panel.get("interval")) // 1000


Check = Callable[[Run], None]
CASES: dict[tuple[str, str], tuple[TimeRange, Check]] = {}


def case(uid: str, title: str, time_range: TimeRange) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        CASES[(uid, title)] = (time_range, check)
        return check
    return register


def all_panels() -> list[Any]:
    return [pytest.param(uid, panel["title"], id=f"{uid}:{panel['title']}")
            for uid, model in MODELS.items() for panel in model["panels"]]


# --- running a panel the way Grafana would --------------------------------------------------

def _variables(model: dict[str, Any], ledger: LedgerDatabase, time_range: TimeRange) -> tuple[list[Variable], list[int]]:
    """Run the dashboard's own variable queries: region "All", then the station list it gives;
    "All" stations on multi-station dashboards, one station on the station dashboard."""
    definitions = {v["name"]: v for v in model["templating"]["list"]}
    region_def, station_def = definitions["region"], definitions["station"]
    region_options = _sql(ledger, expand_sql(region_def["query"], time_range, []))
    assert region_options[0] == {"__text": "Tất cả / All", "__value": "/"}
    region = Variable("region", region_def["current"]["value"], tuple(o["__value"] for o in region_options),
                      region_def["multi"], region_def["includeAll"])
    stations = _sql(ledger, expand_sql(station_def["query"], time_range, [region]))
    options = tuple(o["__value"] for o in stations)
    if station_def["multi"]:
        station = Variable("station", "$__all", options, True, station_def["includeAll"])
    else:
        station = Variable("station", str(ledger.registry.station_ids[STATION]), options, False, False)
    return [region, station], [int(v) for v in station.values()]


def _sql(ledger: LedgerDatabase, query: str) -> list[dict[str, Any]]:
    assert not unexpanded(query), unexpanded(query)
    with psycopg.connect(ledger.reader_dsn, row_factory=dict_row) as conn:
        return conn.execute(query).fetchall()


@pytest.mark.parametrize(("uid", "title"), all_panels())
def test_panel_queries_return_expected_values(uid: str, title: str, ledger_db: LedgerDatabase,
                                              telemetry_db: TelemetryDatabase) -> None:
    assert (uid, title) in CASES, f"no expectation for panel {title!r} of {uid}: add one"
    time_range, check = CASES[(uid, title)]
    model = MODELS[uid]
    panel = next(p for p in model["panels"] if p["title"] == title)
    variables, station_ids = _variables(model, ledger_db, time_range)
    results = []
    for target in panel["targets"]:
        if target["datasource"]["type"] == "influxdb":
            query = expand_influxql(target["query"], time_range, variables,
                                    max_data_points=panel.get("maxDataPoints"), min_interval=panel.get("interval"))
            assert not unexpanded(query), unexpanded(query)
            result = telemetry_db.server.query(INFLUX_DATABASE, query)
        else:
            result = _sql(ledger_db, expand_sql(target["rawSql"], time_range, variables))
        assert result, f"{title}: query {target['refId']} returned nothing"
        results.append(result)
    check(Run(panel, results, time_range, station_ids, ledger_db, telemetry_db))


def test_variables_follow_the_region(ledger_db: LedgerDatabase) -> None:
    model = MODELS[fleet_overview.UID]
    definitions = {v["name"]: v for v in model["templating"]["list"]}
    options = _sql(ledger_db, definitions["region"]["query"])
    paths = ledger_db.registry.region_paths
    assert [o["__value"] for o in options] == ["/", paths["thai-nguyen"], paths["thai-nguyen.dai-tu"],
                                                paths["thai-nguyen.dai-tu.an-khanh"], paths["thai-nguyen.dai-tu.hung-son"]]
    assert options[3]["__text"] == "— — An Khánh (xã)"
    commune = Variable("region", paths["thai-nguyen.dai-tu.hung-son"])
    stations = _sql(ledger_db, expand_sql(definitions["station"]["query"], QUARTER, [commune]))
    ids = ledger_db.registry.station_ids
    assert [s["__value"] for s in stations] == [str(ids["Đài Hùng Sơn"]), str(ids["Đài Hùng Sơn 2"])]


# --- expectations from the ledger -----------------------------------------------------------

def _oracle(run: Run, station_ids: list[int]) -> Availability:
    """The oracle's figures for the ledger's intervals of these stations over the panel's range."""
    with session_scope(run.ledger.sessions) as session:
        rows = session.scalars(select(ConnectivityInterval).where(ConnectivityInterval.station_id.in_(station_ids))).all()
    spans = [Span(r.receiver_id, Connectivity(r.state), r.start_at, r.end_at) for r in rows]
    return summarize(spans, run.time_range.start, run.time_range.end, datetime.now(UTC))


def _station_figures(run: Run) -> dict[str, Availability]:
    return {name: _oracle(run, [sid]) for name, sid in run.ledger.registry.station_ids.items() if sid in run.station_ids}


def _mttr(figures: Availability) -> float | None:
    repaired = [o.duration.total_seconds() for o in figures.outages if not o.ongoing]
    return statistics.fmean(repaired) if repaired else None


def _open_states(run: Run) -> dict[str, str | None]:
    with session_scope(run.ledger.sessions) as session:
        open_now = {i.receiver_id: i.state for i in LedgerRepository(session).open_intervals()}
    return {rid: open_now.get(rid) for rid, sid in run.ledger.registry.station_of.items() if sid in run.station_ids}


@case(fleet_overview.UID, "Hiện tại / Now", QUARTER)
def _online_now(run: Run) -> None:
    states = Counter(_open_states(run).values())
    assert run.rows == [{"Trực tuyến / Online": states["online"], "Mất kết nối / Offline": states["offline"],
                         "Chưa kết nối / Never seen": states[None]}]
    assert states["online"] == 3 and states["offline"] == 1 and states[None] == 1


@case(fleet_overview.UID, "Theo xã, phường / By commune", QUARTER)
def _by_commune(run: Run) -> None:
    states = _open_states(run)
    commune_of = {rid: "An Khánh" if name == "Đài An Khánh" else "Hùng Sơn"
                  for rid, name in fleet_data.RECEIVERS.items() if name}
    expected = defaultdict(lambda: [0, 0])
    for rid, state in states.items():
        expected[commune_of[rid]][0] += state == "online"
        expected[commune_of[rid]][1] += 1
    got = {r["Xã, phường / Commune"]: [r["Trực tuyến / Online"], r["Thiết bị / Receivers"]] for r in run.rows}
    assert got == dict(expected)
    assert [r["Xã, phường / Commune"] for r in run.rows] == ["Hùng Sơn", "An Khánh"]  # worst first
    for row in run.rows:
        assert row["Tỷ lệ trực tuyến / Online share"] == pytest.approx(row["Trực tuyến / Online"] / row["Thiết bị / Receivers"])


@case(fleet_overview.UID, f"{fleet_overview.WORST_STATIONS} trạm kém nhất / {fleet_overview.WORST_STATIONS} worst stations", QUARTER)
def _worst(run: Run) -> None:
    figures = _station_figures(run)
    expected = sorted(figures, key=lambda name: (figures[name].online_fraction, name))
    assert [r["Trạm / Station"] for r in run.rows] == expected
    for row in run.rows:
        f = figures[row["Trạm / Station"]]
        assert float(row["Hoạt động / Availability"]) == pytest.approx(f.online_fraction, abs=1e-12)
        assert row["Số lần mất / Outages"] == len(f.outages)
        assert float(row["Thời gian mất / Downtime"]) == pytest.approx(f.downtime.total_seconds())


@case(fleet_overview.UID, "Đang mất kết nối / Down now", QUARTER)
def _down_now(run: Run) -> None:
    with session_scope(run.ledger.sessions) as session:
        down = [(i.receiver_id, i.start_at, i.start_cause) for i in LedgerRepository(session).open_intervals()
                if i.state == "offline" and run.ledger.registry.station_of[i.receiver_id] in run.station_ids]
    assert [(r["Thiết bị / Receiver"], r["Từ / Since"].replace(tzinfo=UTC), r["Nguyên nhân / Cause"])
            for r in run.rows] == down
    assert [d[0] for d in down] == ["rx-s2"]  # rx-lab is down too, but serves no station


@case(quarterly_evaluation.UID, "Từng trạm / Per station", QUARTER)
def _per_station(run: Run) -> None:
    figures = _station_figures(run)
    assert {r["Trạm / Station"] for r in run.rows} == set(figures)
    for row in run.rows:
        f = figures[row["Trạm / Station"]]
        assert row["Thiết bị / Receivers"] == f.receivers
        assert float(row["Hoạt động / Availability"]) == pytest.approx(f.online_fraction, abs=1e-12)
        assert row["Số lần mất / Outages"] == len(f.outages)
        assert float(row["Thời gian mất / Downtime"]) == pytest.approx(f.downtime.total_seconds())
        mttr = _mttr(f)
        assert (None if row["MTTR"] is None else float(row["MTTR"])) == (None if mttr is None else pytest.approx(mttr))
        longest = f.longest_outage
        assert (row["Lâu nhất / Longest"] is None) == (longest is None)
        if longest is not None:
            assert float(row["Lâu nhất / Longest"]) == pytest.approx(longest.duration.total_seconds())
    # The receiver first seen inside the quarter counts from then, not from the quarter's start.
    assert figures["Đài An Khánh"].observed < 2 * (QUARTER.end - QUARTER.start)
    assert [r["Hoạt động / Availability"] for r in run.rows] == sorted(r["Hoạt động / Availability"] for r in run.rows)


@case(quarterly_evaluation.UID, "Toàn vùng đã chọn / Whole selection", QUARTER)
def _summary(run: Run) -> None:
    whole = _oracle(run, run.station_ids)  # every station: the region "All"
    [row] = run.rows
    assert float(row["Hoạt động / Availability"]) == pytest.approx(whole.online_fraction, abs=1e-12)
    assert row["Số lần mất / Outages"] == len(whole.outages) == 5
    assert float(row["MTTR"]) == pytest.approx(_mttr(whole))


@case(quarterly_evaluation.UID, "Các lần mất kết nối / Outages", QUARTER)
def _outages(run: Run) -> None:
    figures = _station_figures(run)
    expected = sorted(((name, o.receiver_id, o.start, o.duration.total_seconds()) for name, f in figures.items()
                       for o in f.outages), key=lambda o: (-o[3], o[2]))
    got = [(r["Trạm / Station"], r["Thiết bị / Receiver"], r["Bắt đầu / Start"].replace(tzinfo=UTC),
            float(r["Thời lượng / Duration"])) for r in run.rows]
    assert got == expected
    assert all(r["Đang diễn ra / Ongoing"] is False for r in run.rows)


@case(station_detail.UID, "Kết nối (sổ hoạt động) / Connectivity (uptime ledger)", QUARTER)
def _connectivity_timeline(run: Run) -> None:
    [station_id] = run.station_ids
    with session_scope(run.ledger.sessions) as session:
        spans = LedgerRepository(session).spans_of_station(station_id, QUARTER.start, QUARTER.end)
    expected = sorted((max(s.start, QUARTER.start), s.receiver_id, int(s.state is Connectivity.ONLINE)) for s in spans)
    assert [(r["time"].replace(tzinfo=UTC), r["metric"], r["value"]) for r in run.rows] == expected
    assert {r["metric"] for r in run.rows} == {"rx-s1a", "rx-s1b"}


@case(connectivity_events.UID, "Số lần mất kết nối mỗi ngày / Outages started per day", QUARTER)
def _outages_per_day(run: Run) -> None:
    with session_scope(run.ledger.sessions) as session:
        spans = [s for sid in run.station_ids
                 for s in LedgerRepository(session).spans_of_station(sid, QUARTER.start, QUARTER.end)]
    local_days = Counter(_local_day(s.start) for s in spans
                         if s.state is Connectivity.OFFLINE and QUARTER.start <= s.start <= QUARTER.end)
    got = {r["time"].replace(tzinfo=UTC): r["Mất kết nối / Outages started"] for r in run.rows}
    assert got == dict(local_days)


def _local_day(moment: datetime) -> datetime:
    """Midnight in Vietnam's time (UTC+7) of the day a moment falls in, in UTC."""
    local = moment + timedelta(hours=7)
    return datetime(local.year, local.month, local.day, tzinfo=UTC) - timedelta(hours=7)


@case(connectivity_events.UID, "Nguyên nhân mất kết nối / Causes of outages", QUARTER)
def _causes(run: Run) -> None:
    with session_scope(run.ledger.sessions) as session:
        intervals = session.scalars(select(ConnectivityInterval).where(
            ConnectivityInterval.station_id.in_(run.station_ids), ConnectivityInterval.state == "offline")).all()
        expected: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for interval in intervals:
            span = Span(interval.receiver_id, Connectivity.OFFLINE, interval.start_at, interval.end_at)
            for outage in summarize([span], QUARTER.start, QUARTER.end, datetime.now(UTC)).outages:
                expected[interval.start_cause][0] += 1
                expected[interval.start_cause][1] += outage.duration.total_seconds()
    got = {r["Nguyên nhân / Cause"]: [r["Số lần / Outages"], float(r["Thời gian mất / Downtime"])] for r in run.rows}
    assert got == {k: [v[0], pytest.approx(v[1])] for k, v in expected.items()}
    assert set(got) == {"will", "shutdown", "silent"}


# --- expectations from the telemetry written ------------------------------------------------

def _bucket(moment: datetime, interval_s: int, offset_s: int = 0) -> int:
    t = int(moment.timestamp())
    return (t - offset_s) // interval_s * interval_s + offset_s


def _in_range(run: Run, moment: datetime) -> bool:
    return run.time_range.start <= moment <= run.time_range.end


def _records(run: Run) -> list[fleet_data.TelemetryRecord]:
    wanted = {str(s) for s in run.station_ids}
    return [r for r in run.telemetry.records if r.station in wanted and _in_range(run, r.at)]


def _aggregate(run: Run, field: str, key: Callable[[fleet_data.TelemetryRecord], Any],
               reduce: Callable[[list[tuple[datetime, float]]], float]) -> dict[tuple[Any, int], float]:
    groups: dict[tuple[Any, int], list[tuple[datetime, float]]] = defaultdict(list)
    for record in _records(run):
        if field in record.fields:
            groups[(key(record), _bucket(record.at, run.interval_s))].append((record.at, record.fields[field]))
    return {k: reduce(sorted(v)) for k, v in groups.items()}


def _series(run: Run, tag: str | None, target: int = 0) -> dict[tuple[Any, int], float]:
    out = {}
    for series in run.results[target]:
        key = series.get("tags", {}).get(tag) if tag else None
        for time, value in series["values"]:
            if value is not None:
                out[(key, time)] = value
    return out


def _assert_same(got: dict[Any, float], expected: dict[Any, float]) -> None:
    assert set(got) == set(expected), (sorted(set(got) ^ set(expected))[:5])
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k


def _mean(values: list[tuple[datetime, float]]) -> float:
    return statistics.fmean(v for _, v in values)


def _last(values: list[tuple[datetime, float]]) -> float:
    return values[-1][1]


def _spread(values: list[tuple[datetime, float]]) -> float:
    return max(v for _, v in values) - min(v for _, v in values)


def _per_receiver(field: str, reduce: Callable[[list[tuple[datetime, float]]], float]) -> Check:
    def check(run: Run) -> None:
        assert run.interval_s == 300  # 25 h over 300 points, on Grafana's ladder
        _assert_same(_series(run, "receiver"), _aggregate(run, field, lambda r: r.receiver, reduce))
        assert {s["tags"]["receiver"] for s in run.rows} == {"rx-s1a", "rx-s1b"}
    return check


for _title, _field, _reduce in [
    ("Tín hiệu / Signal", "signal_dbm", _mean),
    ("Nhiệt độ / Temperature", "temperature_c", lambda v: max(x for _, x in v)),
    ("Nguồn điện / Supply", "supply_v", lambda v: min(x for _, x in v)),
    ("Tốc độ luồng / Stream bitrate", "bitrate_kbps", _mean),
    ("Luồng âm thanh / Audio stream", "stream", _last),
    ("Bộ khuếch đại / Amplifier", "amplifier", _last),
    ("Mất đệm / Buffer underruns", "underruns", _spread),
    ("Độ trễ báo cáo (đồng hồ) / Report delay (clock)", "delay_s", lambda v: max(x for _, x in v)),
]:
    case(station_detail.UID, _title, DAY)(_per_receiver(_field, _reduce))


@case(station_detail.UID, "Giá trị mới nhất / Latest values", DAY)
def _latest(run: Run) -> None:
    expected: dict[tuple[str, str], dict[str, float]] = {}
    for record in sorted(_records(run), key=lambda r: r.at):
        expected[(record.receiver, record.fw)] = {f: record.fields[f] for f in
                                                  ("signal_dbm", "temperature_c", "supply_v", "uptime_s", "free_memory")}
    got = {(s["tags"]["receiver"], s["tags"]["fw"]): dict(zip(s["columns"][1:], s["values"][0][1:])) for s in run.rows}
    assert got == expected
    assert set(got) == {("rx-s1a", "1.0.0"), ("rx-s1b", "1.0.0"), ("rx-s1b", "1.1.0")}


@case(station_detail.UID, "Sự kiện / Events", DAY)
def _station_events(run: Run) -> None:
    wanted = {str(s) for s in run.station_ids}
    expected = [(int(e.at.timestamp()), e.kind, e.detail, e.receiver)
                for e in sorted(run.telemetry.events, key=lambda e: e.at, reverse=True) if e.station in wanted]
    [series] = run.rows
    assert series["columns"] == ["time", "kind", "detail", "receiver"]
    assert [tuple(v) for v in series["values"]] == expected
    assert len(expected) == 5


@case(fleet_overview.UID, "Tín hiệu trung bình theo vùng / Mean signal by region", DAY)
def _signal_by_region(run: Run) -> None:
    _assert_same(_series(run, "region"), _aggregate(run, "signal_dbm", lambda r: r.region, _mean))
    assert {s["tags"]["region"] for s in run.rows} == {"thai-nguyen/dai-tu/an-khanh", "thai-nguyen/dai-tu/hung-son"}


@case(fleet_overview.UID, "Thiết bị gửi báo cáo / Receivers reporting", DAY)
def _reporting(run: Run) -> None:
    reporting: dict[int, set[str]] = defaultdict(set)
    for record in _records(run):
        reporting[_bucket(record.at, run.interval_s)].add(record.receiver)
    first, last = _bucket(run.time_range.start, run.interval_s), _bucket(run.time_range.end, run.interval_s)
    expected = {(None, t): len(reporting.get(t, ())) for t in range(first, last + 1, run.interval_s)}
    _assert_same(_series(run, None), expected)
    assert set(expected.values()) == {0, 3, 4}  # before the day, during rx-s2's silence, otherwise


@case(firmware.UID, "Số thiết bị theo phiên bản / Receivers per version", DAY)
def _per_version(run: Run) -> None:
    receivers: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in _records(run):
        receivers[(record.fw, _bucket(record.at, run.interval_s))].add(record.receiver)
    _assert_same(_series(run, "fw"), {k: len(v) for k, v in receivers.items()})


@case(firmware.UID, "Phiên bản từng thiết bị / Version of each receiver", DAY)
def _version_of_each(run: Run) -> None:
    expected = {}
    for record in sorted(_records(run), key=lambda r: r.at):
        expected[(record.receiver, record.fw)] = record.fields["uptime_s"]
    got = {(s["tags"]["receiver"], s["tags"]["fw"]): s["values"][0][1] for s in run.rows}
    assert got == expected
    assert ("rx-lab", "1.0.0") not in got  # serves no station


def _serves_chosen_station(run: Run, rid: str) -> bool:
    return run.ledger.registry.station_of[rid] in run.station_ids


@case(firmware.UID, "Đang chạy phiên bản / Versions running now", DAY)
def _versions_now(run: Run) -> None:
    expected = Counter(fleet_data.RUNNING.get(rid, "?") for rid in fleet_data.RECEIVERS
                       if _serves_chosen_station(run, rid))
    assert {r["firmware"]: r["receivers"] for r in run.rows} == dict(expected)
    assert "1.5.0" not in expected  # only rx-lab runs it, and it serves no station


@case(firmware.UID, "Đợt cập nhật / Rollouts", DAY)
def _rollouts(run: Run) -> None:
    states = Counter(state for rid, state in fleet_data.ROLLOUT_TARGETS.items() if _serves_chosen_station(run, rid))
    [row] = run.rows
    assert (row["name"], row["version"], row["state"], row["wave"]) == ("Bản 1.4.0", "1.4.0", "paused", "2 / 2")
    assert (row["confirmed"], row["failed"], row["in_progress"], row["waiting"]) == (
        states["confirmed"], states["failed"] + states["rolled_back"], states["downloading"], 0)
    assert (row["confirmed"], row["failed"], row["in_progress"]) == (2, 1, 1)  # rx-lab's failure is elsewhere


def _events(run: Run) -> list[fleet_data.EventRecord]:
    wanted = {str(s) for s in run.station_ids}
    return [e for e in run.telemetry.events if e.station in wanted and _in_range(run, e.at)]


@case(connectivity_events.UID, "Sự kiện theo loại / Events by kind", DAY)
def _events_by_kind(run: Run) -> None:
    expected = Counter((e.kind, _bucket(e.at, run.interval_s)) for e in _events(run))
    _assert_same(_series(run, "kind"), dict(expected))


@case(connectivity_events.UID, "Sự kiện mỗi ngày / Events per day", DAY)
def _events_per_day(run: Run) -> None:
    expected = Counter((e.kind, int(_local_day(e.at).timestamp())) for e in _events(run))
    _assert_same(_series(run, "kind"), dict(expected))
    assert len({t for _, t in expected}) == 2  # the evening before is another day in Vietnam


# --- expectations from the incidents written --------------------------------------------------

def _region_of_station(run: Run) -> dict[int, int]:
    with psycopg.connect(run.ledger.reader_dsn) as conn:
        return dict(conn.execute("SELECT id, region_id FROM stations").fetchall())


def _chosen(run: Run, record: fleet_data.IncidentRecord, station_ids: list[int] | None = None) -> bool:
    """Whether the dashboard shows an incident for these stations: a receiver's when its
    station is chosen, a commune-wide group's when a station of the commune is."""
    chosen = run.station_ids if station_ids is None else station_ids
    if record.receiver is not None:
        return run.ledger.registry.station_of[record.receiver] in chosen
    communes = {_region_of_station(run)[sid] for sid in chosen}
    return fleet_data.region_id(run.ledger.registry.region_paths[record.region or ""]) in communes


def _unresolved(run: Run, station_ids: list[int] | None = None) -> list[fleet_data.IncidentRecord]:
    """Open and acknowledged incidents the dashboard lists: not a group's members."""
    return [r for r in fleet_data.OPEN_INCIDENTS + fleet_data.RESOLVED_INCIDENTS
            if r.resolved_s is None and r.parent is None and _chosen(run, r, station_ids)]


def _percentile_cont(values: list[float], fraction: float) -> float | None:
    """PostgreSQL's percentile_cont: linear between the two nearest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@case(alerts.UID, "Sự cố đang mở / Open incidents", QUARTER)
def _open_counts(run: Run) -> None:
    told = [r for r in _unresolved(run) if not r.silenced]
    [row] = run.rows
    assert row == {"Nghiêm trọng / Critical": sum(r.severity == "critical" for r in told),
                   "Lớn / Major": sum(r.severity == "major" for r in told),
                   "Nhỏ / Minor": sum(r.severity == "minor" for r in told),
                   "Chưa ai nhận / Not acknowledged": sum(r.acknowledged_s is None for r in told),
                   "Tạm im / Silenced": sum(r.silenced for r in _unresolved(run))}
    # The commune's group counts once, not with its three receivers; rx-lab serves no station.
    assert list(row.values()) == [1, 2, 0, 2, 1]


@case(alerts.UID, "Sự cố chưa đóng / Incidents not resolved", QUARTER)
def _open_table(run: Run) -> None:
    ids = run.ledger.incidents
    got = [(r["Số / No."], r["Mức độ / Severity"], r["Trạng thái / State"]) for r in run.rows]
    assert got == [(ids["amp-now"], "critical", "open"), (ids["hot-now"], "major", "open"),
                   (ids["hung-son-offline"], "major", "acknowledged"), (ids["weak-silenced"], "minor", "silenced")]
    assert {r["Số / No."] for r in run.rows} == {ids[r.name] for r in _unresolved(run)}
    rows = {r["Số / No."]: r for r in run.rows}
    amp, group = rows[ids["amp-now"]], rows[ids["hung-son-offline"]]
    assert amp["Sự cố / Rule"] == "Lỗi bộ khuếch đại / Amplifier fault"
    assert amp["Đối tượng / Subject"] == "rx-s1b — Đài An Khánh"
    record = next(r for r in fleet_data.OPEN_INCIDENTS if r.name == "amp-now")
    assert amp["Từ / Since"].replace(tzinfo=UTC) == record.at - timedelta(seconds=record.started_before_s)
    # Each person once, however many channels; a message not sent yet told nobody.
    assert amp["Đã báo / Told"] == "Lê Văn Cường, Nguyễn Văn An"
    assert amp["Người nhận / Acknowledged by"] is None and amp["Nhận lúc / Acknowledged at"] is None
    assert group["Sự cố / Rule"] == "Mất kết nối / Offline"
    assert group["Đối tượng / Subject"] == "thị trấn Hùng Sơn: 3/3 máy thu / receivers"
    assert group["Người nhận / Acknowledged by"] == "tran.binh"
    assert group["Nhận lúc / Acknowledged at"].replace(tzinfo=UTC) == fleet_data.DAY_START + timedelta(hours=10, minutes=10)
    assert group["Đã báo / Told"] is None


def _times(run: Run, station_ids: list[int] | None = None) -> dict[str, tuple[list[float], list[float], int]]:
    """Per rule and for all: delays to acknowledge and to resolve (each within the range) of
    the incidents crews were told of, and how many of those resolutions cleared by themselves."""
    out: dict[str, tuple[list[float], list[float], int]] = defaultdict(lambda: ([], [], 0))
    for r in fleet_data.OPEN_INCIDENTS + fleet_data.RESOLVED_INCIDENTS:
        if r.parent is not None or r.silenced or not _chosen(run, r, station_ids):
            continue
        for key in (r.kind, "*"):
            acks, resolves, by_itself = out[key]
            if r.acknowledged_s is not None and _in_range(run, r.at + timedelta(seconds=r.acknowledged_s)):
                acks.append(r.acknowledged_s)
            if r.resolved_s is not None and _in_range(run, r.at + timedelta(seconds=r.resolved_s)):
                resolves.append(r.resolved_s)
                by_itself += r.resolved_by is None
            out[key] = (acks, resolves, by_itself)
    return {k: v for k, v in out.items() if v[0] or v[1]}


def _assert_times(rows: list[dict[str, Any]], expected: dict[str, tuple[list[float], list[float], int]]) -> None:
    title = {kind.value: f"{vi} / {en}" for kind, (vi, en) in TITLES.items()} | {"*": "Tất cả / All rules"}
    order = [k for k in [*(kind.value for kind in TITLES), "*"] if k in expected]
    assert [r["Sự cố / Rule"] for r in rows] == [title[k] for k in order]
    for row, key in zip(rows, order, strict=True):
        acks, resolves, by_itself = expected[key]
        assert row["Đã nhận / Acknowledged"] == len(acks)
        assert row["Đã đóng / Resolved"] == len(resolves)
        assert row["Tự hết / Cleared by itself"] == by_itself
        for column, values, fraction in [
            ("Thời gian nhận, trung vị / To acknowledge, median", acks, 0.5),
            ("Thời gian nhận, 90% / To acknowledge, 90th percentile", acks, 0.9),
            ("Thời gian xử lý, trung vị / To resolve, median", resolves, 0.5),
            ("Thời gian xử lý, 90% / To resolve, 90th percentile", resolves, 0.9),
        ]:
            want = _percentile_cont(values, fraction)
            assert row[column] == (None if want is None else pytest.approx(want)), (key, column)


@case(alerts.UID, "Thời gian nhận và xử lý / Time to acknowledge and resolve", QUARTER)
def _time_to_acknowledge_resolve(run: Run) -> None:
    expected = _times(run)
    _assert_times(run.rows, expected)
    by_rule = {r["Sự cố / Rule"]: r for r in run.rows}
    offline, amp, every = (by_rule["Mất kết nối / Offline"], by_rule["Lỗi bộ khuếch đại / Amplifier fault"],
                           by_rule["Tất cả / All rules"])
    # Acknowledged after 1, 2, 5, 10 (the commune's group, once) and 20 minutes: median 5 min.
    assert offline["Thời gian nhận, trung vị / To acknowledge, median"] == 300
    assert offline["Thời gian nhận, 90% / To acknowledge, 90th percentile"] == pytest.approx(960)
    # Resolved after 10 min, 30 min, 1 h, 4 h and 25 h (raised before the quarter): median 1 h.
    assert offline["Thời gian xử lý, trung vị / To resolve, median"] == 3600
    assert (offline["Đã đóng / Resolved"], offline["Tự hết / Cleared by itself"]) == (5, 2)
    assert (amp["Thời gian nhận, trung vị / To acknowledge, median"], amp["Đã nhận / Acknowledged"]) == (60, 2)
    assert amp["Thời gian xử lý, trung vị / To resolve, median"] == 1000
    assert every["Thời gian nhận, trung vị / To acknowledge, median"] == 120
    assert every["Thời gian xử lý, trung vị / To resolve, median"] == pytest.approx(2400)
    assert every["Thời gian xử lý, 90% / To resolve, 90th percentile"] == pytest.approx(37080)


def _run_sql(ledger: LedgerDatabase, uid: str, title: str, station_names: list[str],
             time_range: TimeRange = QUARTER) -> list[dict[str, Any]]:
    """A panel's query with some stations chosen (region "All")."""
    panel = next(p for p in MODELS[uid]["panels"] if p["title"] == title)
    ids = ledger.registry.station_ids
    station = Variable("station", [str(ids[n]) for n in station_names], tuple(str(i) for i in ids.values()), True, True)
    return _sql(ledger, expand_sql(panel["targets"][0]["rawSql"], time_range, [Variable("region", "/"), station]))


@pytest.mark.parametrize("stations", [["Đài An Khánh"], ["Đài Hùng Sơn 2"], ["Đài Hùng Sơn", "Đài An Khánh"]])
def test_incident_panels_follow_the_stations(ledger_db: LedgerDatabase, stations: list[str]) -> None:
    ids = [ledger_db.registry.station_ids[n] for n in stations]
    run = Run({}, [], QUARTER, ids, ledger_db, None)
    listed = _run_sql(ledger_db, alerts.UID, "Sự cố chưa đóng / Incidents not resolved", stations)
    assert sorted(r["Số / No."] for r in listed) == sorted(ledger_db.incidents[r.name] for r in _unresolved(run, ids))
    # The commune's group belongs to each station of the commune, and to no other.
    group = ledger_db.incidents["hung-son-offline"]
    assert (group in {r["Số / No."] for r in listed}) == any("Hùng Sơn" in n for n in stations)
    [counts] = _run_sql(ledger_db, alerts.UID, "Sự cố đang mở / Open incidents", stations)
    # Each incident listed is counted once: by its severity, or as silenced.
    assert sum(v for k, v in counts.items() if k != "Chưa ai nhận / Not acknowledged") == len(listed)
    _assert_times(_run_sql(ledger_db, alerts.UID, "Thời gian nhận và xử lý / Time to acknowledge and resolve",
                           stations), _times(run, ids))


def test_time_to_acknowledge_resolve_counts_what_was_done_within_the_range(ledger_db: LedgerDatabase) -> None:
    """A range holding only the group's acknowledgement: one acknowledgement, no resolution;
    its three members, acknowledged with it, are not counted again."""
    day = TimeRange(fleet_data.DAY_START, fleet_data.DAY_START + timedelta(days=1))
    rows = _run_sql(ledger_db, alerts.UID, "Thời gian nhận và xử lý / Time to acknowledge and resolve",
                    list(ledger_db.registry.station_ids), day)
    assert [(r["Sự cố / Rule"], r["Đã nhận / Acknowledged"], r["Thời gian nhận, trung vị / To acknowledge, median"],
             r["Đã đóng / Resolved"], r["Thời gian xử lý, trung vị / To resolve, median"]) for r in rows] == [
        ("Mất kết nối / Offline", 1, 600, 0, None), ("Tất cả / All rules", 1, 600, 0, None)]


def test_grafana_reads_no_notification_channel_or_crew(ledger_db: LedgerDatabase) -> None:
    """Channels are apprise URLs with credentials: Grafana's login may read who was told, never
    where (notifications.channel) nor the crews' members."""
    with psycopg.connect(ledger_db.reader_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM notifications WHERE state = 'sent'").fetchone() == (4,)
    for query in ["SELECT channel FROM notifications", "SELECT last_error FROM notifications",
                  "SELECT ack_token_hash FROM notifications", "SELECT * FROM notifications",
                  "SELECT channels FROM crew_members", "SELECT name FROM crews"]:
        with psycopg.connect(ledger_db.reader_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(query)
