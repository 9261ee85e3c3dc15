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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


from tests.support.server_process import HttpServerProcess

VICTORIA_METRICS = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"


class VictoriaMetrics(HttpServerProcess):
    name = "victoria-metrics"
    stop_timeout_s = 30.0

    def command(self) -> list[str]:
        return [VICTORIA_METRICS, f"-httpListenAddr=127.0.0.1:{self.port}", f"-storageDataPath={self.directory / 'data'}",
                # Fresh points are readable at once (the default hides the last 30 s).
                "-search.latencyOffset=0s", "-retentionPeriod=100y", "-loggerLevel=WARN"]

    def start(self) -> VictoriaMetrics:
        return super().start()

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
