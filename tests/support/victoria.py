"""A private VictoriaMetrics (Debian's ``victoria-metrics``) on a free loopback port: it speaks
InfluxDB's write API (``/write`` and ``/api/v2/write``, as influxdb-client sends it), so the
telemetry writer runs against a real server. A field becomes the metric
``<measurement>_<field>``; string fields are not stored.

    with victoria(tmp_path) as vm:
        ... write to vm.url ...
        vm.export('{__name__=~"telemetry_.*"}')   # -> one dict per series: metric, values, timestamps
        vm.stop(); vm.start()                      # an outage: same port, same data directory
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

VICTORIA_METRICS = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
START_TIMEOUT_S = 60.0


class VictoriaMetrics:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    def start(self) -> VictoriaMetrics:
        """Start (or start again after ``stop``) on the same port and data directory; returns
        once it answers ``/health``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "victoria-metrics.log").open("ab")
        self._process = subprocess.Popen(
            [VICTORIA_METRICS, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.directory / 'data'}",
             # Fresh points are readable at once (the default hides the last 30 s).
             "-search.latencyOffset=0s", "-retentionPeriod=100y", "-loggerLevel=WARN"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self._process.returncode}:\n{self.log}")
            try:
                if self._http.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"victoria-metrics did not answer on {self.url} after {START_TIMEOUT_S}s:\n{self.log}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._http.close()

    @property
    def log(self) -> str:
        path = self.directory / "victoria-metrics.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """Every stored sample of the series matching ``match``: one dict per series with
        ``metric`` (name and labels), ``values`` and ``timestamps`` (Unix ms)."""
        response = self._http.post("/api/v1/export", data={"match[]": match, "start": "0"})
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__!=""}') -> dict[tuple[str, tuple[tuple[str, str], ...], int], float]:
        """The export flattened: (metric name, sorted labels without ``db``, Unix s) -> value."""
        out: dict[tuple[str, tuple[tuple[str, str], ...], int], float] = {}
        for series in self.export(match):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            labels.pop("db", None)
            key = tuple(sorted(labels.items()))
            for value, ms in zip(series["values"], series["timestamps"], strict=True):
                out[(name, key, ms // 1000)] = value
        return out

    def sample_count(self, match: str = '{__name__!=""}') -> int:
        return sum(len(series["values"]) for series in self.export(match))


@contextmanager
def victoria(directory: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(directory).start()
    try:
        yield server
    finally:
        server.close()
