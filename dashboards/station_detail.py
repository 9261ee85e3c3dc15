"""Chi tiết trạm / Station detail: each receiver of one station — signal, temperature, supply,
the audio stream's health, the clock — and its connectivity timeline from the uptime ledger."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import statetimeline, table, timeseries

from dashboards.common import (AMPLIFIER_STATES, CONNECTIVITY_STATES, MAX_DATA_POINTS, MIN_INTERVAL, STATION_FILTER,
                               STREAM_STATES, mapping, new_dashboard, thresholds, unit)
from dashboards.queries import INFLUX, POSTGRES, influxql, sql

UID = "loa-station-detail"


def _per_receiver(select: str, measurement: str = "telemetry") -> str:
    return f"""
SELECT {select} FROM "{measurement}"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY time($__interval), "receiver" fill(none)
"""


SIGNAL = _per_receiver('mean("signal_dbm")')
TEMPERATURE = _per_receiver('max("temperature_c")')
SUPPLY = _per_receiver('min("supply_v")')
STREAM = _per_receiver('last("stream")')
AMPLIFIER = _per_receiver('last("amplifier")')
# Underruns count up from boot; their spread over an interval is how many happened in it (a
# reboot inside the interval resets the counter and hides that interval's count).
UNDERRUNS = _per_receiver('spread("underruns")')
BITRATE = _per_receiver('mean("bitrate_kbps")')
# How late reports arrive by the receiver's own clock: large values mean a skewed clock.
DELAY = _per_receiver('max("delay_s")')

LATEST = f"""
SELECT last("signal_dbm") AS "signal_dbm", last("temperature_c") AS "temperature_c", last("supply_v") AS "supply_v",
       last("uptime_s") AS "uptime_s", last("free_memory") AS "free_memory"
FROM "telemetry"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY "receiver", "fw"
"""

EVENTS = f"""
SELECT "kind", "detail", "receiver" FROM "event"
WHERE {STATION_FILTER} AND $timeFilter
ORDER BY time DESC
LIMIT 200
"""

# One row per ledger transition (and one at the start of the range for the interval already
# open then); the time-series format turns the receiver column into one series each.
CONNECTIVITY = """
SELECT GREATEST(c.start_at, $__timeFrom()::timestamp) AS "time",
       c.receiver_id AS metric,
       CASE c.state WHEN 'online' THEN 1 ELSE 0 END AS value
FROM connectivity_intervals c
WHERE c.station_id IN ($station)
  AND c.start_at < $__timeTo()::timestamp
  AND (c.end_at IS NULL OR c.end_at > $__timeFrom()::timestamp)
ORDER BY 1, 2
"""


def _series(title: str, query: str, unit_name: str = "", *, span: int = 12) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).datasource(INFLUX).with_target(influxql(query, alias="$tag_receiver"))
             .interval(MIN_INTERVAL).max_data_points(MAX_DATA_POINTS).height(8).span(span))
    return panel.unit(unit_name) if unit_name else panel


def _states(title: str, query: str, states: dict[int, tuple[str, str]]) -> statetimeline.Panel:
    return (statetimeline.Panel().title(title).datasource(INFLUX).with_target(influxql(query, alias="$tag_receiver"))
            .mappings(mapping(states)).interval(MIN_INTERVAL).max_data_points(MAX_DATA_POINTS).height(6).span(12))


def build() -> dash.Dashboard:
    return (
        new_dashboard(UID, "Loa — Chi tiết trạm / Station detail",
                      "Từng thiết bị thu của một trạm / each receiver of one station", station_multi=False)
        .with_panel(statetimeline.Panel().title("Kết nối (sổ hoạt động) / Connectivity (uptime ledger)")
                    .datasource(POSTGRES).with_target(sql(CONNECTIVITY, time_series=True))
                    .mappings(mapping(CONNECTIVITY_STATES)).height(6).span(24))
        .with_panel(table.Panel().title("Giá trị mới nhất / Latest values").datasource(INFLUX)
                    .with_target(influxql(LATEST, table=True)).height(6).span(24)
                    .override_by_name("signal_dbm", [unit("dBm")]).override_by_name("temperature_c", [unit("celsius")])
                    .override_by_name("supply_v", [unit("volt")]).override_by_name("uptime_s", [unit("s")])
                    .override_by_name("free_memory", [unit("bytes")]))
        .with_panel(_series("Tín hiệu / Signal", SIGNAL, "dBm")
                    .thresholds(thresholds((None, "red"), (-105, "orange"), (-95, "green"))))
        .with_panel(_series("Nhiệt độ / Temperature", TEMPERATURE, "celsius")
                    .thresholds(thresholds((None, "green"), (60, "orange"), (70, "red"))))
        .with_panel(_series("Nguồn điện / Supply", SUPPLY, "volt"))
        .with_panel(_series("Tốc độ luồng / Stream bitrate", BITRATE, "Kbits"))
        .with_panel(_states("Luồng âm thanh / Audio stream", STREAM, STREAM_STATES))
        .with_panel(_states("Bộ khuếch đại / Amplifier", AMPLIFIER, AMPLIFIER_STATES))
        .with_panel(_series("Mất đệm / Buffer underruns", UNDERRUNS))
        .with_panel(_series("Độ trễ báo cáo (đồng hồ) / Report delay (clock)", DELAY, "s"))
        .with_panel(table.Panel().title("Sự kiện / Events").datasource(INFLUX).with_target(influxql(EVENTS, table=True))
                    .height(8).span(24))
    )
