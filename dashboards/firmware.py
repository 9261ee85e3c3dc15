"""Phiên bản phần mềm / Firmware versions across the fleet, as the receivers report them, and
the firmware rollouts that reach the stations chosen (their progress from the database)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import table, timeseries

from dashboards.common import MAX_DATA_POINTS, MIN_INTERVAL, STATION_FILTER, new_dashboard, organize, unit
from dashboards.queries import INFLUX, POSTGRES, influxql, sql

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


# What each active receiver of the stations chosen runs now, from the live state (its last
# birth or report): the fleet's answer to "who still runs the old version".
VERSIONS_NOW = """
SELECT coalesce(live.firmware, '?') AS firmware, count(*) AS receivers
FROM receivers rx LEFT JOIN receiver_live_state live ON live.receiver_id = rx.id
WHERE rx.status = 'active' AND rx.station_id IN ($station)
GROUP BY 1 ORDER BY 2 DESC, 1
"""

# Rollouts with a receiver in the stations chosen, newest first: where each stands, counted
# over those receivers (rollouts/models.py TargetState).
ROLLOUTS = """
SELECT r.id, r.name, fr.version, r.state, (r.current_wave + 1) || ' / ' || r.wave_count AS wave,
       count(*) FILTER (WHERE t.state = 'confirmed') AS confirmed,
       count(*) FILTER (WHERE t.state IN ('failed', 'rolled_back')) AS failed,
       count(*) FILTER (WHERE t.state IN ('offered', 'downloading', 'downloaded', 'verified', 'deferred',
                                          'installing', 'rebooting')) AS in_progress,
       count(*) FILTER (WHERE t.state = 'pending') AS waiting,
       r.created_at AS created
FROM rollouts r
JOIN firmware_releases fr ON fr.id = r.release_id
JOIN rollout_targets t ON t.rollout_id = r.id
JOIN receivers rx ON rx.id = t.receiver_id
WHERE rx.station_id IN ($station) AND t.state NOT IN ('skipped', 'cancelled')
GROUP BY r.id, r.name, fr.version, r.state, r.current_wave, r.wave_count, r.created_at
ORDER BY r.created_at DESC, r.id DESC
LIMIT 50
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
        .with_panel(table.Panel().title("Đang chạy phiên bản / Versions running now").datasource(POSTGRES)
                    .with_target(sql(VERSIONS_NOW)).height(8).span(8)
                    .with_transformation(organize({"firmware": "Phiên bản / Version",
                                                   "receivers": "Thiết bị / Receivers"})))
        .with_panel(table.Panel().title("Đợt cập nhật / Rollouts").datasource(POSTGRES)
                    .with_target(sql(ROLLOUTS)).height(8).span(16)
                    .with_transformation(organize({"name": "Tên / Name", "version": "Phiên bản / Version",
                                                   "state": "Trạng thái / State", "wave": "Đợt / Wave",
                                                   "confirmed": "Xong / Confirmed", "failed": "Lỗi / Failed",
                                                   "in_progress": "Đang làm / In progress",
                                                   "waiting": "Chờ / Waiting", "created": "Tạo lúc / Created"})))
    )
