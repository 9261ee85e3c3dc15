"""What every Loa dashboard shares: time zone, the region and station variables, the InfluxQL
station filter, the ledger's availability functions, and a few panel helpers."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import dashboard as model

from dashboards.queries import POSTGRES

# People read times in Vietnam's time; storage stays UTC. The zone has had no DST since 1975,
# so a fixed offset (the daily InfluxQL buckets below) is exact.
TIMEZONE = "Asia/Ho_Chi_Minh"
UTC_OFFSET_HOURS = 7
TAGS = ["loa"]
# Receivers report every 300 s by default: a finer $__interval would draw gaps between reports.
MIN_INTERVAL = "5m"
# Points per time series panel. Fixed (instead of the panel's pixel width) so that
# $__interval is the same on every screen, and the tests can compute it the way Grafana does.
MAX_DATA_POINTS = 300

# InfluxQL: only receivers of the chosen stations. Station tags are numeric ids, so the
# regular expression Grafana builds from a multi-value variable ("3|7|12") needs no escaping,
# whereas region paths contain "/" and cannot go inside an InfluxQL /regex/ literal.
STATION_FILTER = '"station" =~ /^($station)$/'

REGION_VARIABLE_SQL = """
SELECT __text, __value FROM (
  SELECT 'Tất cả / All' AS __text, '/' AS __value, '' AS tree
  UNION ALL
  SELECT repeat('— ', length(path) - length(replace(path, '/', '')) - 2) || name || ' (' || level || ')', path, path
  FROM regions
) AS choice
ORDER BY tree
"""

STATION_VARIABLE_SQL = """
SELECT st.name || ' — ' || r.name AS __text, st.id::text AS __value
FROM stations st JOIN regions r ON r.id = st.region_id
WHERE r.path LIKE '$region%'
ORDER BY st.name, r.name
"""

# Availability and outages over the dashboard's time range come from the one definition the API
# also answers with: the functions fleet_service/uptime/availability_sql.py defines and migration
# 0008 installs. Both take "now" from now(), once per query: an open interval runs to it,
# nothing is counted past it, an outage still open when the range reaches it is "ongoing".
# Durations are exact microseconds (duration_us, observed_us, online_us); panels show seconds.
_RANGE = "$__timeFrom()::timestamp, $__timeTo()::timestamp"
LEDGER_SPANS = f"loa_ledger_spans({_RANGE})"
AVAILABILITY = f"loa_availability({_RANGE})"


def region_variable() -> dash.QueryVariable:
    return (dash.QueryVariable("region").label("Vùng / Region").datasource(POSTGRES).query(REGION_VARIABLE_SQL.strip())
            .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD).sort(model.VariableSort.DISABLED)
            .current(model.VariableOption(text="Tất cả / All", value="/")))


def station_variable(*, multi: bool) -> dash.QueryVariable:
    """Stations of the chosen region and everything under it. "All" is every one of those
    stations (no custom all-value), so it narrows with the region."""
    variable = (dash.QueryVariable("station").label("Trạm / Station").datasource(POSTGRES)
                .query(STATION_VARIABLE_SQL.strip()).refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
                .sort(model.VariableSort.DISABLED).multi(multi).include_all(multi))
    if multi:
        variable = variable.current(model.VariableOption(text="All", value="$__all"))
    return variable


def new_dashboard(uid: str, title: str, description: str, *, station_multi: bool = True,
                  time_from: str = "now-24h", time_to: str = "now") -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags(TAGS).timezone(TIMEZONE)
            .time(time_from, time_to).refresh("1m").readonly()
            .with_variable(region_variable()).with_variable(station_variable(multi=station_multi)))


def mapping(values: dict[int, tuple[str, str]]) -> list[model.ValueMapping]:
    return [model.ValueMap(options={str(k): model.ValueMappingResult(text=text, color=color, index=i)
                                    for i, (k, (text, color)) in enumerate(values.items())})]


def thresholds(*steps: tuple[float | None, str]) -> cogbuilder.Builder[model.ThresholdsConfig]:
    return (dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=value, color=color) for value, color in steps]))


def fixed_color(color: str) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})


def unit(name: str) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="unit", value=name)


def organize(rename: dict[str, str]) -> model.DataTransformerConfig:
    return model.DataTransformerConfig(id_val="organize", options={"renameByName": rename})


STREAM_STATES = {0: ("Nghỉ / idle", "text"), 1: ("Đang kết nối / connecting", "blue"), 2: ("Đang phát / playing", "green"),
                 3: ("Đệm / buffering", "yellow"), 4: ("Lỗi / error", "red")}
AMPLIFIER_STATES = {0: ("Tắt / off", "text"), 1: ("Bật / on", "green"), 2: ("Hỏng / fault", "red")}
CONNECTIVITY_STATES = {1: ("Trực tuyến / online", "green"), 0: ("Mất kết nối / offline", "red")}
