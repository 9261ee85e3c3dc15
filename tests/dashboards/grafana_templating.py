"""Grafana's query templating, done here the way Grafana does it, so the dashboards' stored
queries can be run against real InfluxDB and PostgreSQL servers without a Grafana server.

What is reproduced (from Grafana 11's sources: templateSrv, the InfluxDB datasource's
``interpolateQueryExpr``, the PostgreSQL datasource's ``interpolateVariable`` and its Go macro
engine, and ``rangeutil.calculateInterval``):

- ``$name`` and ``${name}`` variables; names Grafana does not know are left alone.
- InfluxDB: a multi-value or include-all variable becomes its values regex-escaped and joined
  with ``|``; a single-value one is regex-escaped unless it is a number. ``$timeFilter`` is
  ``time >= <from>ms and time <= <to>ms``. ``$__interval`` is the range divided by the panel's
  max data points, rounded on Grafana's ladder, never below the panel's min interval.
- PostgreSQL: a multi-value or include-all variable becomes its values single-quoted and joined
  with ``,``; a single-value one is inserted raw. ``$__timeFrom()``, ``$__timeTo()``,
  ``$__timeFilter(col)`` and ``$__time(col)`` expand to UTC RFC 3339 literals as the backend
  macro engine writes them.
- "All" without a custom all-value stands for every option of the variable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
_SQL_MACRO = re.compile(r"\$(__\w+)\(([^)]*)\)")
# rangeutil's ladder: (below this many ms, use this interval in ms).
_LADDER = [(10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
           (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
           (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
           (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
           (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
           (1814400000, 604800000), (3628800000, 2592000000)]
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000, "y": 31536000000}


@dataclass(frozen=True)
class Variable:
    name: str
    value: str | list[str]        # "$__all" for All
    options: tuple[str, ...] = ()  # every option's value (what All stands for)
    multi: bool = False
    include_all: bool = False

    def values(self) -> list[str]:
        if self.value == "$__all" or self.value == ["$__all"]:
            return list(self.options)
        return [self.value] if isinstance(self.value, str) else list(self.value)


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def from_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def to_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


def interval_ms(time_range: TimeRange, max_data_points: int, min_interval: str | None) -> int:
    raw = (time_range.to_ms - time_range.from_ms) / max_data_points
    rounded = next((step for below, step in _LADDER if raw < below), 31536000000)
    low = parse_duration_ms(min_interval) if min_interval else 0
    return max(rounded, low)


def parse_duration_ms(text: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not match:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


def format_duration(ms: int) -> str:
    for unit in ("y", "w", "d", "h", "m", "s"):
        if ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def _regex_escape(value: str) -> str:
    return re.sub(r"[\\^$*+?.()|{}\[\]/]", lambda m: "\\" + m.group(0), value)


def _influx_special_escape(value: str) -> str:
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def _influx_value(variable: Variable) -> str:
    values = variable.values()
    if not variable.multi and not variable.include_all:
        value = values[0]
        return value if _is_number(value) else _regex_escape(value)
    return "|".join(_influx_special_escape(v) for v in values)


def _postgres_value(variable: Variable) -> str:
    values = variable.values()
    if not variable.multi and not variable.include_all:
        return values[0]
    return ",".join("'" + v.replace("'", "''") + "'" for v in values)


def _is_number(value: str) -> bool:
    try:
        return not math.isnan(float(value))
    except ValueError:
        return False


def _replace_variables(query: str, known: dict[str, str]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return known.get(name, match.group(0))
    return _VARIABLE.sub(substitute, query)


def expand_influxql(query: str, time_range: TimeRange, variables: list[Variable], *, max_data_points: int | None,
                    min_interval: str | None) -> str:
    known = {v.name: _influx_value(v) for v in variables}
    known["timeFilter"] = f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms"
    if "$__interval" in query:
        # Grafana would use the panel's width in pixels: a panel grouping by $__interval must
        # fix maxDataPoints for the result to be the same on every screen.
        assert max_data_points, "a panel using $__interval sets maxDataPoints"
        interval = interval_ms(time_range, max_data_points, min_interval)
        known["__interval"] = format_duration(interval)
        known["__interval_ms"] = str(interval)
    return _replace_variables(query, known)


def _rfc3339(moment: datetime) -> str:
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def expand_sql(query: str, time_range: TimeRange, variables: list[Variable]) -> str:
    query = _replace_variables(query, {v.name: _postgres_value(v) for v in variables})
    start, end = _rfc3339(time_range.start), _rfc3339(time_range.end)

    def macro(match: re.Match[str]) -> str:
        name, argument = match.group(1), match.group(2).strip()
        if name == "__timeFrom":
            return f"'{start}'"
        if name == "__timeTo":
            return f"'{end}'"
        if name == "__timeFilter":
            return f"{argument} BETWEEN '{start}' AND '{end}'"
        if name == "__time":
            return f'{argument} AS "time"'
        raise ValueError(f"macro ${name} is not expanded by these tests")
    return _SQL_MACRO.sub(macro, query)


def unexpanded(query: str) -> list[str]:
    """Template syntax left in a query after expansion (a variable the dashboard lacks)."""
    return [m.group(0) for m in _VARIABLE.finditer(query) if not m.group(0).startswith("$tag_")]
