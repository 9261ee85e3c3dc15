"""Phiên bản phần mềm / Firmware versions across the fleet, as the receivers report them."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries

from dashboards.common import MAX_DATA_POINTS, MIN_INTERVAL, STATION_FILTER, new_dashboard, unit
from dashboards.queries import INFLUX, influxql

UID = "loa-firmware"

# Receivers per version: one "last" per receiver and version in each interval, counted.
RECEIVERS_PER_VERSION = f"""
SELECT count("last") FROM (
  SELECT last("seq") FROM "telemetry" WHERE {STATION_FILTER} AND $timeFilter
  GROUP BY time($__interval), "receiver", "fw"
) WHERE $timeFilter
GROUP BY time($__interval), "fw" fill(none)
"""

LATEST_PER_RECEIVER = f"""
SELECT last("uptime_s") AS "uptime_s" FROM "telemetry"
WHERE {STATION_FILTER} AND $timeFilter
GROUP BY "receiver", "fw"
"""


def build() -> dash.Dashboard:
    return (
        new_dashboard(UID, "Loa — Phiên bản phần mềm / Firmware versions",
                      "Phiên bản thiết bị báo cáo / versions the receivers report", time_from="now-7d")
        .with_panel(timeseries.Panel().title("Số thiết bị theo phiên bản / Receivers per version").datasource(INFLUX)
                    .with_target(influxql(RECEIVERS_PER_VERSION, alias="$tag_fw")).interval(MIN_INTERVAL)
                    .max_data_points(MAX_DATA_POINTS).height(9).span(24))
        .with_panel(table.Panel().title("Phiên bản từng thiết bị / Version of each receiver").datasource(INFLUX)
                    .with_target(influxql(LATEST_PER_RECEIVER, table=True)).height(12).span(24)
                    .override_by_name("uptime_s", [unit("s")]))
    )
