"""The one definition of availability: the uptime ledger's intervals clipped to a period, in SQL.

``spans_sql(dialect)`` is the ledger clipped to [t_from, t_to) with one "now": an open interval
runs to now, nothing is counted past now, a span that ends up empty is left out, and an offline
span is "ongoing" when its interval is still open and the period reaches now (docs/uptime.md).
``availability_sql(dialect)`` sums those spans per receiver and station: observed and online
time, and the outages. Times are exact microseconds on both databases.

On PostgreSQL the migration 0008 installs both as the functions ``loa_ledger_spans(t_from, t_to,
t_now)`` and ``loa_availability(t_from, t_to, t_now)`` (``t_now`` defaults to now()), which the
API and Grafana's panels call; SQLite, which has no functions, runs the same text as a subquery
with bound parameters. tests/fleet_service/uptime/test_availability_sql.py proves both equal to
the Python oracle (tests/fleet_service/uptime/oracle.py) and the installed functions equal to
this text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Boolean, FromClause, Integer, Select, String, bindparam, column, func, select, text
from sqlalchemy.orm import Session

from fleet_service.db import UTCDateTime
from fleet_service.scope import RegionScope
from fleet_service.uptime.availability import Availability, Outage

# Per dialect: how the period's bounds are named in the text, and a timestamp's microseconds
# since 1970 (UTC, as stored). SQLite keeps timestamps as text: the whole seconds go through
# strftime, but the fraction is read digit by digit, because SQLite's own parser rounds it to
# milliseconds. PostgreSQL's extract(epoch) is exact (numeric).
_PARAMETERS = {
    "postgresql": {"t_from": "t_from", "t_to": "t_to", "t_now": "t_now"},  # the functions' arguments
    "sqlite": {"t_from": ":t_from", "t_to": ":t_to", "t_now": ":t_now"},   # bound parameters
}
_EPOCH_US = {
    "postgresql": "CAST(extract(epoch FROM {0}) * 1000000 AS bigint)",
    "sqlite": "(CAST(strftime('%s', substr({0}, 1, 19)) AS INTEGER) * 1000000"
              " + CAST(substr({0} || '000000', 21, 6) AS INTEGER))",
}

# The end of what can be counted: the period's end, or now if that comes first.
_HORIZON = "CASE WHEN {t_to} < {t_now} THEN {t_to} ELSE {t_now} END"

_SPANS = """
SELECT clipped.receiver_id, clipped.station_id, clipped.state, clipped.start_cause, clipped.lo, clipped.hi,
       {epoch_hi} - {epoch_lo} AS duration_us, clipped.ongoing
FROM (
  SELECT c.receiver_id, c.station_id, c.state, c.start_cause,
         CASE WHEN c.start_at > {t_from} THEN c.start_at ELSE {t_from} END AS lo,
         CASE WHEN c.end_at IS NOT NULL AND c.end_at < {horizon} THEN c.end_at ELSE {horizon} END AS hi,
         (c.end_at IS NULL AND {t_to} >= {t_now}) AS ongoing
  FROM connectivity_intervals c
  WHERE c.start_at < {t_to} AND (c.end_at IS NULL OR c.end_at > {t_from})
) AS clipped
WHERE clipped.hi > clipped.lo
"""

_AVAILABILITY = """
SELECT spans.receiver_id, spans.station_id,
       CAST(sum(spans.duration_us) AS bigint) AS observed_us,
       CAST(sum(CASE WHEN spans.state = 'online' THEN spans.duration_us ELSE 0 END) AS bigint) AS online_us,
       CAST(sum(CASE WHEN spans.state = 'offline' THEN 1 ELSE 0 END) AS integer) AS outages
FROM {spans} AS spans
GROUP BY spans.receiver_id, spans.station_id
"""

# The result columns of each: name, SQLAlchemy type (to read them), PostgreSQL type (the functions').
SPAN_COLUMNS = (("receiver_id", String(), "varchar"), ("station_id", Integer(), "integer"),
                ("state", String(), "varchar"), ("start_cause", String(), "varchar"),
                ("lo", UTCDateTime(), "timestamp"), ("hi", UTCDateTime(), "timestamp"),
                ("duration_us", BigInteger(), "bigint"), ("ongoing", Boolean(), "boolean"))
AVAILABILITY_COLUMNS = (("receiver_id", String(), "varchar"), ("station_id", Integer(), "integer"),
                        ("observed_us", BigInteger(), "bigint"), ("online_us", BigInteger(), "bigint"),
                        ("outages", Integer(), "integer"))


def spans_sql(dialect: str) -> str:
    names = _PARAMETERS[dialect]
    epoch = _EPOCH_US[dialect]
    return _SPANS.format(horizon=_HORIZON.format(**names), epoch_hi=epoch.format("clipped.hi"),
                         epoch_lo=epoch.format("clipped.lo"), **names).strip()


def availability_sql(dialect: str) -> str:
    # On PostgreSQL the sums read the spans function itself: one definition in the database.
    spans = "loa_ledger_spans(t_from, t_to, t_now)" if dialect == "postgresql" else f"({spans_sql(dialect)})"
    return _AVAILABILITY.format(spans=spans).strip()


def postgres_functions() -> list[str]:
    """CREATE OR REPLACE statements of both functions, as the migration installs them. SQL
    functions, STABLE: PostgreSQL inlines them into the calling query, so a caller's filter
    (a station, a receiver) reaches the ledger's indexes."""
    out = []
    for name, body, columns in (("loa_ledger_spans", spans_sql("postgresql"), SPAN_COLUMNS),
                                ("loa_availability", availability_sql("postgresql"), AVAILABILITY_COLUMNS)):
        returns = ", ".join(f"{column_name} {pg_type}" for column_name, _type, pg_type in columns)
        out.append(f"CREATE OR REPLACE FUNCTION {name}(t_from timestamp, t_to timestamp,\n"
                   f"    t_now timestamp DEFAULT (now() AT TIME ZONE 'UTC'))\n"
                   f"RETURNS TABLE ({returns})\nLANGUAGE sql STABLE\nAS $loa$\n{body}\n$loa$")
    return out


# --- running it --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Period:
    """[start, end) with the one "now" of the request, all timezone-aware."""
    start: datetime
    end: datetime
    now: datetime


def _source(session: Session, name: str, columns: tuple[tuple[str, Any, str], ...], period: Period) -> FromClause:
    """The spans or availability of ``period`` as a FROM clause: the installed function on
    PostgreSQL, the same text as a subquery on SQLite."""
    binds = [bindparam(key, value, type_=UTCDateTime()) for key, value in
             (("t_from", period.start), ("t_to", period.end), ("t_now", period.now))]
    cols = [column(column_name, sql_type) for column_name, sql_type, _pg_type in columns]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        function = {"spans": func.loa_ledger_spans, "availability": func.loa_availability}[name]
        return function(*binds).table_valued(*cols).alias(name)
    sql = {"spans": spans_sql, "availability": availability_sql}[name](dialect)
    return text(sql).bindparams(*binds).columns(*cols).subquery(name)


def _filtered(query: Select, source: FromClause, *, receiver_id: str | None, station_id: int | None,  # type: ignore[type-arg]
              region_path: str | None) -> Select:  # type: ignore[type-arg]
    if receiver_id is not None:
        query = query.where(source.c.receiver_id == receiver_id)
    if station_id is not None:
        query = query.where(source.c.station_id == station_id)
    if region_path is not None:
        query = query.where(source.c.station_id.in_(RegionScope(region_path).station_ids()))
    return query


def availability(session: Session, period: Period, *, receiver_id: str | None = None, station_id: int | None = None,
                 region_path: str | None = None) -> Availability:
    """Availability of one receiver, one station or one region's subtree (exactly one given)."""
    scope = {"receiver_id": receiver_id, "station_id": station_id, "region_path": region_path}
    totals = _source(session, "availability", AVAILABILITY_COLUMNS, period)
    row = session.execute(_filtered(
        select(func.coalesce(func.sum(totals.c.observed_us), 0), func.coalesce(func.sum(totals.c.online_us), 0),
               func.count(func.distinct(totals.c.receiver_id))).select_from(totals), totals, **scope)).one()
    spans = _source(session, "spans", SPAN_COLUMNS, period)
    outages = session.execute(_filtered(
        select(spans.c.receiver_id, spans.c.lo, spans.c.hi, spans.c.ongoing).select_from(spans)
        .where(spans.c.state == "offline").order_by(spans.c.lo, spans.c.receiver_id), spans, **scope)).all()
    return Availability(
        period.start, period.end,
        observed=timedelta(microseconds=int(row[0])), online=timedelta(microseconds=int(row[1])),
        outages=[Outage(rid, lo, hi, ongoing=bool(ongoing)) for rid, lo, hi, ongoing in outages],
        receivers=int(row[2]),
    )
