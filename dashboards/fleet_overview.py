"""Toàn mạng lưới / Fleet overview: who is online now, by region, the worst stations of the
time range, and the fleet's signal and reports over time."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as viz

from dashboards.common import (AVAILABILITY, MAX_DATA_POINTS, MIN_INTERVAL, STATION_FILTER, fixed_color,
                               new_dashboard, thresholds, unit)
from dashboards.queries import INFLUX, POSTGRES, influxql, sql

UID = "loa-fleet-overview"
# Stations listed as the worst of the range: a screenful.
WORST_STATIONS = 10

ONLINE_NOW = """
SELECT count(*) FILTER (WHERE c.state = 'online') AS "Trực tuyến / Online",
       count(*) FILTER (WHERE c.state = 'offline') AS "Mất kết nối / Offline",
       count(*) FILTER (WHERE c.state IS NULL) AS "Chưa kết nối / Never seen"
FROM receivers rx
LEFT JOIN connectivity_intervals c ON c.receiver_id = rx.id AND c.end_at IS NULL
WHERE rx.status = 'active' AND rx.station_id IN ($station)
"""

BY_REGION = """
SELECT r.name AS "Xã, phường / Commune",
       count(*) FILTER (WHERE c.state = 'online') AS "Trực tuyến / Online",
       count(*) AS "Thiết bị / Receivers",
       count(*) FILTER (WHERE c.state = 'online')::float / count(*) AS "Tỷ lệ trực tuyến / Online share"
FROM receivers rx
JOIN stations st ON st.id = rx.station_id
JOIN regions r ON r.id = st.region_id
LEFT JOIN connectivity_intervals c ON c.receiver_id = rx.id AND c.end_at IS NULL
WHERE rx.status = 'active' AND rx.station_id IN ($station)
GROUP BY r.id, r.name
ORDER BY 4, 1
"""

WORST = f"""
SELECT st.name AS "Trạm / Station",
       sum(a.online_us)::float8 / sum(a.observed_us) AS "Hoạt động / Availability",
       sum(a.outages) AS "Số lần mất / Outages",
       sum(a.observed_us - a.online_us) / 1e6 AS "Thời gian mất / Downtime"
FROM {AVAILABILITY} a JOIN stations st ON st.id = a.station_id
WHERE a.station_id IN ($station)
GROUP BY st.id, st.name
ORDER BY 2, 1
LIMIT {WORST_STATIONS}
"""

DOWN_NOW = """
SELECT rx.id AS "Thiết bị / Receiver", st.name AS "Trạm / Station", c.start_at AS "Từ / Since",
       c.start_cause AS "Nguyên nhân / Cause"
FROM connectivity_intervals c
JOIN receivers rx ON rx.id = c.receiver_id
JOIN stations st ON st.id = rx.station_id
WHERE c.end_at IS NULL AND c.state = 'offline' AND rx.status = 'active' AND rx.station_id IN ($station)
ORDER BY c.start_at
"""

SIGNAL_BY_REGION = f"""
SELECT mean("signal_dbm") FROM "telemetry"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY time($__interval), "region" fill(none)
"""

REPORTING = f"""
SELECT count("last") FROM (
  SELECT last("seq") FROM "telemetry" WHERE {STATION_FILTER} AND $timeFilter
  GROUP BY time($__interval), "receiver"
) WHERE $timeFilter
GROUP BY time($__interval) fill(0)
"""


def build() -> dash.Dashboard:
    return (
        new_dashboard(UID, "Loa — Toàn mạng lưới / Fleet overview",
                      "Thiết bị trực tuyến, theo vùng, trạm kém nhất / online now, by region, worst stations")
        .with_panel(stat.Panel().title("Hiện tại / Now").datasource(POSTGRES).with_target(sql(ONLINE_NOW))
                    .description("Trạng thái kết nối hiện tại trong sổ / current state in the uptime ledger")
                    .height(6).span(8).color_mode(viz.BigValueColorMode.BACKGROUND)
                    .override_by_name("Trực tuyến / Online", [fixed_color("green")])
                    .override_by_name("Mất kết nối / Offline", [fixed_color("red")])
                    .override_by_name("Chưa kết nối / Never seen", [fixed_color("text")]))
        .with_panel(table.Panel().title("Theo xã, phường / By commune").datasource(POSTGRES).with_target(sql(BY_REGION))
                    .height(6).span(16).override_by_name("Tỷ lệ trực tuyến / Online share", [unit("percentunit")]))
        .with_panel(table.Panel().title(f"{WORST_STATIONS} trạm kém nhất / {WORST_STATIONS} worst stations")
                    .description("Tỷ lệ hoạt động trong khoảng thời gian đã chọn / availability over the chosen time range")
                    .datasource(POSTGRES).with_target(sql(WORST)).height(9).span(12)
                    .override_by_name("Hoạt động / Availability", [unit("percentunit")])
                    .override_by_name("Thời gian mất / Downtime", [unit("s")]))
        .with_panel(table.Panel().title("Đang mất kết nối / Down now").datasource(POSTGRES).with_target(sql(DOWN_NOW))
                    .height(9).span(12))
        .with_panel(timeseries.Panel().title("Tín hiệu trung bình theo vùng / Mean signal by region")
                    .datasource(INFLUX).with_target(influxql(SIGNAL_BY_REGION, alias="$tag_region"))
                    .unit("dBm").interval(MIN_INTERVAL).max_data_points(MAX_DATA_POINTS).height(8).span(12))
        .with_panel(timeseries.Panel().title("Thiết bị gửi báo cáo / Receivers reporting")
                    .description("Số thiết bị có ít nhất một bản tin / receivers with at least one report per interval")
                    .datasource(INFLUX).with_target(influxql(REPORTING, alias="Thiết bị / receivers"))
                    .interval(MIN_INTERVAL).max_data_points(MAX_DATA_POINTS).height(8).span(12)
                    .thresholds(thresholds((None, "green"))))
    )

