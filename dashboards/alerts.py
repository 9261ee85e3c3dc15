"""Sự cố / Incidents: the alert incidents not resolved yet, how many of each severity, and how
long crews took to acknowledge and to resolve them over the time range, by rule.

A grouped incident (a station or commune whose receivers failed together) stands for its
members: members (``parent_id`` set) are left out everywhere, or one fault would count many
times. Silenced incidents (planned work: nobody was told) are listed and counted apart, and
left out of the times, which measure how fast crews answer what they are told."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import stat, table
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as model

from dashboards.common import fixed_color, new_dashboard, unit
from dashboards.queries import POSTGRES, sql
from fleet_service.alerts.rules import TITLES, Severity

UID = "loa-alerts"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# The rules' titles as the crews' messages write them (alerts/rules.py), in the rules' order.
RULES = "(VALUES\n  {}\n) AS rule(kind, title, ord)".format(",\n  ".join(
    f"({_literal(kind.value)}, {_literal(f'{vi} / {en}')}, {n})" for n, (kind, (vi, en)) in enumerate(TITLES.items())))
SEVERITY_TEXT = {Severity.CRITICAL: ("Nghiêm trọng / Critical", "red"), Severity.MAJOR: ("Lớn / Major", "orange"),
                 Severity.MINOR: ("Nhỏ / Minor", "yellow")}
STATE_TEXT = {"open": ("Đang mở / Open", "red"), "acknowledged": ("Đã nhận / Acknowledged", "blue"),
              "silenced": ("Tạm im / Silenced", "text")}
# Most severe first.
SEVERITY_RANK = "CASE i.severity {} ELSE {} END".format(
    " ".join(f"WHEN {_literal(s.value)} THEN {n}" for n, s in enumerate(Severity)), len(Severity))

# Incidents of the stations chosen. A commune-wide group has no station: it belongs to the
# stations of its commune. Incidents of receivers that serve no station are left out, as the
# other dashboards leave those receivers out.
CHOSEN = """(i.station_id IN ($station)
     OR i.station_id IS NULL AND i.region_id IN (SELECT s.region_id FROM stations s WHERE s.id IN ($station)))"""

# A group's members, from what the evaluator recorded when it raised it ("3/4").
_MEMBERS = ("coalesce(': ' || json_array_length(i.detail -> 'receivers') || '/' || (i.detail ->> 'of')"
            " || ' máy thu / receivers', '')")

OPEN_INCIDENTS = f"""
SELECT i.severity AS "Mức độ / Severity",
       coalesce(rule.title, i.kind) AS "Sự cố / Rule",
       CASE i.scope
         WHEN 'receiver' THEN i.receiver_id || coalesce(' — ' || st.name, '')
         WHEN 'station' THEN coalesce(st.name, '?') || {_MEMBERS}
         WHEN 'region' THEN coalesce(r.level || ' ' || r.name, '?') || {_MEMBERS}
         ELSE i.summary
       END AS "Đối tượng / Subject",
       i.started_at AS "Từ / Since",
       CASE WHEN i.suppressed_by IS NOT NULL THEN 'silenced' ELSE i.state END AS "Trạng thái / State",
       i.acknowledged_by AS "Người nhận / Acknowledged by",
       i.acknowledged_at AS "Nhận lúc / Acknowledged at",
       told.names AS "Đã báo / Told",
       i.id AS "Số / No."
FROM incidents i
LEFT JOIN {RULES} ON rule.kind = i.kind
LEFT JOIN stations st ON st.id = i.station_id
LEFT JOIN regions r ON r.id = i.region_id
LEFT JOIN LATERAL (
  SELECT string_agg(DISTINCT n.recipient, ', ' ORDER BY n.recipient) AS names
  FROM notifications n
  WHERE n.incident_id = i.id AND n.state = 'sent' AND n.reason <> 'resolved'
) AS told ON true
WHERE i.state IN ('open', 'acknowledged') AND i.parent_id IS NULL AND {CHOSEN}
ORDER BY i.suppressed_by IS NOT NULL, {SEVERITY_RANK}, i.state = 'acknowledged', i.started_at, i.id
LIMIT 500
"""

_SEVERITY_COUNTS = ",\n       ".join(
    f'count(*) FILTER (WHERE i.suppressed_by IS NULL AND i.severity = {_literal(s.value)}) AS "{SEVERITY_TEXT[s][0]}"'
    for s in Severity)
OPEN_BY_SEVERITY = f"""
SELECT {_SEVERITY_COUNTS},
       count(*) FILTER (WHERE i.suppressed_by IS NULL AND i.state = 'open') AS "Chưa ai nhận / Not acknowledged",
       count(*) FILTER (WHERE i.suppressed_by IS NOT NULL) AS "Tạm im / Silenced"
FROM incidents i
WHERE i.state IN ('open', 'acknowledged') AND i.parent_id IS NULL AND {CHOSEN}
"""

# Over the time range: each acknowledgement made in it, each resolution made in it (an incident
# raised before the range counts once it is dealt with inside it), timed from when the incident
# was raised, i.e. from when the crew was told. percentile_cont interpolates, as a median does.
TIME_TO_ACKNOWLEDGE_RESOLVE = f"""
WITH done AS (
  SELECT i.kind,
         CASE WHEN $__timeFilter(i.acknowledged_at)
              THEN extract(epoch FROM i.acknowledged_at - i.opened_at)::float8 END AS ack_s,
         CASE WHEN $__timeFilter(i.resolved_at)
              THEN extract(epoch FROM i.resolved_at - i.opened_at)::float8 END AS resolve_s,
         i.resolved_by IS NULL AS by_itself
  FROM incidents i
  WHERE i.parent_id IS NULL AND i.suppressed_by IS NULL AND {CHOSEN}
    AND ($__timeFilter(i.acknowledged_at) OR $__timeFilter(i.resolved_at))
)
SELECT CASE WHEN GROUPING(d.kind) = 1 THEN 'Tất cả / All rules' ELSE coalesce(min(rule.title), d.kind) END
         AS "Sự cố / Rule",
       count(d.ack_s) AS "Đã nhận / Acknowledged",
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d.ack_s) AS "Thời gian nhận, trung vị / To acknowledge, median",
       percentile_cont(0.9) WITHIN GROUP (ORDER BY d.ack_s) AS "Thời gian nhận, 90% / To acknowledge, 90th percentile",
       count(d.resolve_s) AS "Đã đóng / Resolved",
       count(d.resolve_s) FILTER (WHERE d.by_itself) AS "Tự hết / Cleared by itself",
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d.resolve_s) AS "Thời gian xử lý, trung vị / To resolve, median",
       percentile_cont(0.9) WITHIN GROUP (ORDER BY d.resolve_s) AS "Thời gian xử lý, 90% / To resolve, 90th percentile"
FROM done d
LEFT JOIN {RULES} ON rule.kind = d.kind
GROUP BY GROUPING SETS ((d.kind), ())
ORDER BY GROUPING(d.kind), min(rule.ord), d.kind
"""


def _text_mapping(values: dict[str, tuple[str, str]]) -> model.DynamicConfigValue:
    """A text column's codes shown as words, in colour."""
    options = {code: {"text": text, "color": color, "index": i}
               for i, (code, (text, color)) in enumerate(values.items())}
    return model.DynamicConfigValue(id_val="mappings", value=[{"type": "value", "options": options}])


COLOR_TEXT = model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})


def _zero_green(color: str) -> list[model.DynamicConfigValue]:
    """A count that is green at zero and ``color`` from one."""
    steps: list[dict[str, Any]] = [{"value": None, "color": "green"}, {"value": 1, "color": color}]
    return [model.DynamicConfigValue(id_val="color", value={"mode": "thresholds"}),
            model.DynamicConfigValue(id_val="thresholds", value={"mode": "absolute", "steps": steps})]


def build() -> dash.Dashboard:
    counts = (stat.Panel().title("Sự cố đang mở / Open incidents").datasource(POSTGRES)
              .with_target(sql(OPEN_BY_SEVERITY))
              .description("Sự cố chưa đóng theo mức độ (sự cố nhóm tính một lần; tạm im tính riêng) / "
                           "incidents not resolved, by severity (a group counts once; silenced ones apart)")
              .height(5).span(24).color_mode(viz.BigValueColorMode.BACKGROUND)
              .override_by_name("Tạm im / Silenced", [fixed_color("text")]))
    for severity in Severity:
        text, color = SEVERITY_TEXT[severity]
        counts = counts.override_by_name(text, _zero_green(color))
    counts = counts.override_by_name("Chưa ai nhận / Not acknowledged", _zero_green("purple"))
    return (
        new_dashboard(UID, "Loa — Sự cố / Incidents",
                      "Sự cố đang mở, thời gian nhận và xử lý / open incidents, time to acknowledge and resolve",
                      time_from="now-30d")
        .with_panel(counts)
        .with_panel(table.Panel().title("Sự cố chưa đóng / Incidents not resolved").datasource(POSTGRES)
                    .with_target(sql(OPEN_INCIDENTS))
                    .description("Đang mở và đã nhận; sự cố nhóm thay cho các máy thu của nó; giờ Việt Nam / "
                                 "open and acknowledged; a group stands for its receivers; Vietnam time")
                    .height(10).span(24)
                    .override_by_name("Mức độ / Severity",
                                      [_text_mapping({s.value: SEVERITY_TEXT[s] for s in Severity}), COLOR_TEXT])
                    .override_by_name("Trạng thái / State", [_text_mapping(STATE_TEXT), COLOR_TEXT]))
        .with_panel(table.Panel().title("Thời gian nhận và xử lý / Time to acknowledge and resolve")
                    .datasource(POSTGRES).with_target(sql(TIME_TO_ACKNOWLEDGE_RESOLVE))
                    .description("Các lần nhận và đóng trong khoảng thời gian đã chọn, tính từ lúc báo; không tính "
                                 "sự cố tạm im và thành phần của nhóm / acknowledgements and resolutions within the "
                                 "time range, from when the incident was raised; silenced incidents and group "
                                 "members left out")
                    .height(9).span(24)
                    .override_by_regexp(".*(median|percentile)$", [unit("s")]))
    )
