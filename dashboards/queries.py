"""Query types for the two datasources. grafana-foundation-sdk has no InfluxDB or PostgreSQL
query builders, so these are small cog data queries that serialise to the JSON Grafana stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models.dashboard import DataSourceRef

# Fixed uids: the provisioning files, the dashboards and `loa dashboards publish` agree on them.
INFLUX_UID = "loa-influxdb"
POSTGRES_UID = "loa-postgres"
INFLUX = DataSourceRef(type_val="influxdb", uid=INFLUX_UID)
POSTGRES = DataSourceRef(type_val="grafana-postgresql-datasource", uid=POSTGRES_UID)


@dataclass
class InfluxQL(cogvariants.Dataquery):
    """A raw InfluxQL query (the InfluxDB datasource in InfluxQL mode)."""

    ref_id: str
    query: str
    result_format: Literal["time_series", "table"] = "time_series"
    alias: str = ""

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {"refId": self.ref_id, "datasource": INFLUX.to_json(), "query": self.query,
                                      "rawQuery": True, "resultFormat": self.result_format}
        if self.alias:
            payload["alias"] = self.alias
        return payload


@dataclass
class SQL(cogvariants.Dataquery):
    """A raw SQL query (the PostgreSQL datasource, code mode)."""

    ref_id: str
    sql: str
    result_format: Literal["time_series", "table"] = "table"

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "datasource": POSTGRES.to_json(), "rawSql": self.sql, "rawQuery": True,
                "editorMode": "code", "format": self.result_format}


class Query(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: InfluxQL | SQL) -> None:
        self._internal = query

    def build(self) -> cogvariants.Dataquery:
        return self._internal


def influxql(query: str, ref_id: str = "A", *, table: bool = False, alias: str = "") -> Query:
    return Query(InfluxQL(ref_id, _tidy(query), "table" if table else "time_series", alias))


def sql(query: str, ref_id: str = "A", *, time_series: bool = False) -> Query:
    return Query(SQL(ref_id, _tidy(query), "time_series" if time_series else "table"))


def _tidy(text: str) -> str:
    """Queries are written indented in the modules; store them flush left."""
    lines = [line.rstrip() for line in text.strip("\n").splitlines()]
    indent = min((len(line) - len(line.lstrip()) for line in lines if line), default=0)
    return "\n".join(line[indent:] for line in lines)
