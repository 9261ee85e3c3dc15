"""Đánh giá quý / Quarterly evaluation: availability, outages and mean time to repair per station,
from the uptime ledger, over Grafana's time range (the previous quarter by default)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table

from dashboards.common import AVAILABILITY, LEDGER_SPANS, new_dashboard, unit
from dashboards.queries import POSTGRES, sql

UID = "loa-quarterly-evaluation"
# Outages listed one by one: the longest first, enough for a quarter's report.
OUTAGE_ROWS = 500

# Availability, outages and downtime per station from loa_availability; MTTR (the mean length of
# the outages that ended: an ongoing one has no repair time yet) and the longest outage from the
# outages themselves, loa_ledger_spans. Both clip to the range like every other figure here.
_OUTAGE_FIGURES = f"""
SELECT s.station_id, avg(s.duration_us) FILTER (WHERE NOT s.ongoing) / 1e6 AS mttr, max(s.duration_us) / 1e6 AS longest
FROM {LEDGER_SPANS} s
WHERE s.state = 'offline' AND s.station_id IN ($station)
GROUP BY s.station_id"""

PER_STATION = f"""
WITH figures AS (
  SELECT a.station_id, count(DISTINCT a.receiver_id) AS receivers,
         sum(a.online_us)::float8 / sum(a.observed_us) AS availability,
         sum(a.outages) AS outages, sum(a.observed_us - a.online_us) / 1e6 AS downtime
  FROM {AVAILABILITY} a
  WHERE a.station_id IN ($station)
  GROUP BY a.station_id
),
outages AS ({_OUTAGE_FIGURES.strip()})
SELECT st.name AS "Trạm / Station",
       r.name AS "Xã, phường / Commune",
       f.receivers AS "Thiết bị / Receivers",
       f.availability AS "Hoạt động / Availability",
       f.outages AS "Số lần mất / Outages",
       f.downtime AS "Thời gian mất / Downtime",
       o.mttr AS "MTTR",
       o.longest AS "Lâu nhất / Longest"
FROM figures f
JOIN stations st ON st.id = f.station_id
JOIN regions r ON r.id = st.region_id
LEFT JOIN outages o ON o.station_id = f.station_id
ORDER BY 4, 1
"""

SUMMARY = f"""
WITH figures AS (
  SELECT sum(a.online_us)::float8 / sum(a.observed_us) AS availability, sum(a.outages) AS outages
  FROM {AVAILABILITY} a
  WHERE a.station_id IN ($station)
),
repairs AS (
  SELECT avg(s.duration_us) / 1e6 AS mttr
  FROM {LEDGER_SPANS} s
  WHERE s.state = 'offline' AND NOT s.ongoing AND s.station_id IN ($station)
)
SELECT f.availability AS "Hoạt động / Availability", f.outages AS "Số lần mất / Outages", r.mttr AS "MTTR"
FROM figures f CROSS JOIN repairs r
"""

OUTAGES = f"""
SELECT st.name AS "Trạm / Station", s.receiver_id AS "Thiết bị / Receiver",
       s.lo AS "Bắt đầu / Start", s.duration_us / 1e6 AS "Thời lượng / Duration",
       s.start_cause AS "Nguyên nhân / Cause", s.ongoing AS "Đang diễn ra / Ongoing"
FROM {LEDGER_SPANS} s JOIN stations st ON st.id = s.station_id
WHERE s.state = 'offline' AND s.station_id IN ($station)
ORDER BY 4 DESC, 3
LIMIT {OUTAGE_ROWS}
"""


def build() -> dash.Dashboard:
    return (
        new_dashboard(UID, "Loa — Đánh giá quý / Quarterly evaluation",
                      "Tỷ lệ hoạt động từng trạm theo sổ hoạt động / per-station availability from the uptime ledger",
                      time_from="now-1Q/fQ", time_to="now-1Q/fQ")
        .refresh("")
        .with_panel(stat.Panel().title("Toàn vùng đã chọn / Whole selection").datasource(POSTGRES)
                    .with_target(sql(SUMMARY)).height(5).span(24)
                    .override_by_name("Hoạt động / Availability", [unit("percentunit")])
                    .override_by_name("MTTR", [unit("s")]))
        .with_panel(table.Panel().title("Từng trạm / Per station").datasource(POSTGRES).with_target(sql(PER_STATION))
                    .height(12).span(24)
                    .override_by_name("Hoạt động / Availability", [unit("percentunit")])
                    .override_by_name("Thời gian mất / Downtime", [unit("s")])
                    .override_by_name("MTTR", [unit("s")]).override_by_name("Lâu nhất / Longest", [unit("s")]))
        .with_panel(table.Panel().title("Các lần mất kết nối / Outages").datasource(POSTGRES).with_target(sql(OUTAGES))
                    .height(12).span(24).override_by_name("Thời lượng / Duration", [unit("s")]))
    )
