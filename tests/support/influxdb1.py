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
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"
# influxd 1.6 opens its HTTP port only after loading its shards; a second is typical here, the
# rest is room for a loaded 2-core machine.
START_TIMEOUT_S = 60.0


class InfluxError(RuntimeError):
    """The server refused a write or a query; the message is the server's."""


class Influx1:
    def __init__(self, directory: Path | None = None) -> None:
        """``directory`` holds data, meta, WAL, config and log; by default a temporary one,
        removed by ``close``."""
        self._temporary = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="loa-influxdb1-")) if directory is None else Path(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Influx1:
        """Write a config and start influxd; returns once it answers ``/ping``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "influxdb.conf"
        config.write_text(self._config())
        log = (self.directory / "influxd.log").open("ab")
        self._process = subprocess.Popen([INFLUXD, "-config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"influxd exited with {self._process.returncode}:\n{self.log}")
            try:
                if self._http.get("/ping").status_code == 204:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"influxd did not answer on {self.url} after {START_TIMEOUT_S}s:\n{self.log}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._http.close()
        if self._temporary:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Influx1:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def log(self) -> str:
        path = self.directory / "influxd.log"
        return path.read_text(errors="replace") if path.exists() else ""

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
