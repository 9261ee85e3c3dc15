"""A private InfluxDB 1.6.7 (Debian's ``influxdb`` package) for tests: the server that answers
InfluxQL on ``/query`` and line protocol on ``/write``, so that the dashboards' queries and the
telemetry writer's line protocol are checked against the real thing.

    with influx1(tmp_path) as influx:          # or: with Influx1() as influx: (a temporary directory)
        influx.create_database("loa")
        influx.write("loa", "telemetry,receiver=r1 signal_dbm=-71i 1700000000")
        influx.query("loa", "SELECT last(signal_dbm) FROM telemetry GROUP BY receiver")
        # -> [{"name": "telemetry", "tags": {"receiver": "r1"}, "columns": ["time", "last"],
        #      "values": [[1700000000, -71]]}]

Everything binds to 127.0.0.1 on free ports; data, meta and WAL live under the given
directory; usage reporting and the ``_internal`` monitor database are off.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


from tests.support.ports import free_port
from tests.support.server_process import HttpServerProcess

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"


class InfluxError(RuntimeError):
    """The server refused a write or a query; the message is the server's."""


class Influx1(HttpServerProcess):
    name = "influxd"
    health_path = "/ping"
    health_status = 204

    def __init__(self, directory: Path | None = None) -> None:
        """``directory`` holds data, meta, WAL, config and log; by default a temporary one,
        removed by ``close``."""
        self._temporary = directory is None
        super().__init__(Path(tempfile.mkdtemp(prefix="loa-influxdb1-")) if directory is None else Path(directory))

    def command(self) -> list[str]:
        config = self.directory / "influxdb.conf"
        config.write_text(self._config())
        return [INFLUXD, "-config", str(config)]

    def start(self) -> Influx1:
        return super().start()

    def close(self) -> None:
        super().close()
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Influx1:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


    # --- API ----------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        self._query_raw(None, f'CREATE DATABASE "{name}"', method="POST")

    def write(self, db: str, lines: str, precision: str = "s") -> None:
        """Write line protocol (one point per line; timestamps in ``precision``: s, ms, u, ns)."""
        response = self._http.post("/write", params={"db": db, "precision": precision}, content=lines.encode())
        if response.status_code != 204:
            raise InfluxError(f"write refused ({response.status_code}): {response.text}")

    def query(self, db: str, influxql: str) -> list[dict[str, Any]]:
        """Run one InfluxQL statement; returns its series, each a dict with ``name``, ``tags``
        (absent without GROUP BY), ``columns`` and ``values``. Times are Unix seconds."""
        results = self._query_raw(db, influxql)
        return results[0].get("series", []) if results else []

    def _query_raw(self, db: str | None, influxql: str, method: str = "GET") -> list[dict[str, Any]]:
        params = {"q": influxql, "epoch": "s"}
        if db is not None:
            params["db"] = db
        response = self._http.request(method, "/query", params=params)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or "error" in body:
            raise InfluxError(f"query refused ({response.status_code}): {body.get('error') or response.text}")
        results: list[dict[str, Any]] = body.get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxError(f"query failed: {result['error']} ({influxql})")
        return results

    def _config(self) -> str:
        root = self.directory
        return f"""
reporting-disabled = true
bind-address = "127.0.0.1:{free_port()}"
[meta]
  dir = "{root / 'meta'}"
[data]
  dir = "{root / 'data'}"
  wal-dir = "{root / 'wal'}"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  log-enabled = false
[continuous_queries]
  enabled = false
"""


@contextmanager
def influx1(directory: Path | None = None) -> Iterator[Influx1]:
    """A running InfluxDB 1.6.7 with data under ``directory`` (default: a temporary one),
    stopped afterwards."""
    server = Influx1(directory).start()
    try:
        yield server
    finally:
        server.close()
