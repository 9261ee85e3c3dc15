"""Đánh giá quý / Quarterly evaluation: availability, outages and mean time to repair per station,
from the uptime ledger, over Grafana's time range (the previous quarter by default)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table

from dashboards.common import LEDGER_SPANS_SQL, new_dashboard, unit
from dashboards.queries import POSTGRES, sql

UID = "loa-quarterly-evaluation"
# Outages listed one by one: the longest first, enough for a quarter's report.
OUTAGE_ROWS = 500

# MTTR: the mean length of the outages that ended (an ongoing one has no repair time yet),
# each clipped to the range like every other figure here.
PER_STATION = f"""
WITH {LEDGER_SPANS_SQL.strip()}
SELECT st.name AS "Trạm / Station",
       r.name AS "Xã, phường / Commune",
       count(DISTINCT s.receiver_id) AS "Thiết bị / Receivers",
       sum(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'online')
         / sum(extract(epoch FROM s.hi - s.lo)) AS "Hoạt động / Availability",
       count(*) FILTER (WHERE s.state = 'offline') AS "Số lần mất / Outages",
       coalesce(sum(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'offline'), 0) AS "Thời gian mất / Downtime",
       avg(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'offline' AND NOT s.ongoing) AS "MTTR",
       max(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'offline') AS "Lâu nhất / Longest"
FROM spans s
JOIN stations st ON st.id = s.station_id
JOIN regions r ON r.id = st.region_id
WHERE s.hi > s.lo
GROUP BY st.id, st.name, r.name
ORDER BY 4, 1
"""

SUMMARY = f"""
WITH {LEDGER_SPANS_SQL.strip()}
SELECT sum(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'online')
         / sum(extract(epoch FROM s.hi - s.lo)) AS "Hoạt động / Availability",
       count(*) FILTER (WHERE s.state = 'offline') AS "Số lần mất / Outages",
       avg(extract(epoch FROM s.hi - s.lo)) FILTER (WHERE s.state = 'offline' AND NOT s.ongoing) AS "MTTR"
FROM spans s
WHERE s.hi > s.lo
"""

OUTAGES = f"""
WITH {LEDGER_SPANS_SQL.strip()}
SELECT st.name AS "Trạm / Station", s.receiver_id AS "Thiết bị / Receiver",
       s.lo AS "Bắt đầu / Start", extract(epoch FROM s.hi - s.lo) AS "Thời lượng / Duration",
       s.start_cause AS "Nguyên nhân / Cause", s.ongoing AS "Đang diễn ra / Ongoing"
FROM spans s JOIN stations st ON st.id = s.station_id
WHERE s.hi > s.lo AND s.state = 'offline'
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
