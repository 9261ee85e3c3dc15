"""Kết nối và sự kiện / Connectivity and events over time: outages from the ledger, events the
receivers report, by kind."""

from __future__ import annotations

from grafana_foundation_sdk.builders import barchart, dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries

from dashboards.common import (LEDGER_SPANS, MAX_DATA_POINTS, MIN_INTERVAL, STATION_FILTER, UTC_OFFSET_HOURS,
                               new_dashboard, unit)
from dashboards.queries import INFLUX, POSTGRES, influxql, sql

UID = "loa-connectivity-events"

EVENTS_BY_KIND = f"""
SELECT sum("count") FROM "event"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY time($__interval), "kind" fill(none)
"""

# Calendar days in Vietnam's time: day buckets start at 00:00 +07:00 (17:00 UTC).
EVENTS_PER_DAY = f"""
SELECT sum("count") FROM "event"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY time(1d, -{UTC_OFFSET_HOURS}h), "kind" fill(none)
"""

OUTAGES_PER_DAY = f"""
SELECT date_trunc('day', c.start_at + interval '{UTC_OFFSET_HOURS} hours') - interval '{UTC_OFFSET_HOURS} hours' AS "time",
       count(*) AS "Mất kết nối / Outages started"
FROM connectivity_intervals c
WHERE c.state = 'offline' AND c.station_id IN ($station) AND $__timeFilter(c.start_at)
GROUP BY 1
ORDER BY 1
"""

CAUSES = f"""
SELECT s.start_cause AS "Nguyên nhân / Cause", count(*) AS "Số lần / Outages",
       sum(s.duration_us) / 1e6 AS "Thời gian mất / Downtime"
FROM {LEDGER_SPANS} s
WHERE s.state = 'offline' AND s.station_id IN ($station)
GROUP BY 1
ORDER BY 2 DESC, 1
"""


def build() -> dash.Dashboard:
    return (
        new_dashboard(UID, "Loa — Kết nối và sự kiện / Connectivity and events",
                      "Mất kết nối và sự kiện theo thời gian / outages and events over time", time_from="now-7d")
        .with_panel(timeseries.Panel().title("Sự kiện theo loại / Events by kind").datasource(INFLUX)
                    .with_target(influxql(EVENTS_BY_KIND, alias="$tag_kind")).interval(MIN_INTERVAL)
                    .max_data_points(MAX_DATA_POINTS).height(8).span(12))
        .with_panel(barchart.Panel().title("Sự kiện mỗi ngày / Events per day").datasource(INFLUX)
                    .with_target(influxql(EVENTS_PER_DAY, alias="$tag_kind")).height(8).span(12))
        .with_panel(barchart.Panel().title("Số lần mất kết nối mỗi ngày / Outages started per day").datasource(POSTGRES)
                    .with_target(sql(OUTAGES_PER_DAY, time_series=True)).height(8).span(12))
        .with_panel(table.Panel().title("Nguyên nhân mất kết nối / Causes of outages").datasource(POSTGRES)
                    .with_target(sql(CAUSES)).height(8).span(12)
                    .override_by_name("Thời gian mất / Downtime", [unit("s")]))
    )
