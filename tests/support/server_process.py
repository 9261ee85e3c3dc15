"""A server the tests start as a subprocess on a free loopback port and wait for over HTTP
(InfluxDB 1.6, VictoriaMetrics): start, health check, stop, log."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port

# Servers load their data before they open their HTTP port; a second is typical here, the rest
# is room for a loaded 2-core machine.
START_TIMEOUT_S = 60.0


class HttpServerProcess:
    name = "server"           # for messages and the log file's name
    health_path = "/health"
    health_status = 200
    stop_timeout_s = 15.0

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._http = httpx.Client(base_url=self.url, timeout=30.0)

    def command(self) -> list[str]:
        """The command line (after the directory exists); subclasses write their config here."""
        raise NotImplementedError

    def start(self):  # type: ignore[no-untyped-def]
        """Start (or start again after ``stop``, on the same port and directory); returns once
        the health check answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self._log_path.open("ab")
        self._process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.log}")
            try:
                if self._http.get(self.health_path).status_code == self.health_status:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} after {START_TIMEOUT_S}s:\n{self.log}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self) -> None:
        self.stop()
        self._http.close()

    @property
    def _log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""
