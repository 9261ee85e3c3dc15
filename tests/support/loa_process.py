"""``loa serve`` as production runs it: its own process, configured only by LOA_* variables,
with an admin API token made by the ``loa`` CLI against the same database.

    service = LoaProcess(directory, {"LOA_BROKER": "embedded", ...})
    service.start()               # admin user + token with the CLI, then ``loa serve``
    service.api.get("/api/v1/ingest/status").json()
    service.run_cli("receivers", "revoke", "rx-1")
    service.stop()

Its stderr (the service's log) is kept in ``directory/service.stderr.log``.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parents[2]
# Migrations, imports and the broker's start on a loaded 2-core machine.
START_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 60.0
_TOKEN_LINE = re.compile(r"^[A-Za-z0-9_-]{32,}$")


def loa_command() -> list[str]:
    loa = Path(sys.executable).with_name("loa")
    return [str(loa)] if loa.exists() else [sys.executable, "-c", "from fleet_service.cli import app; app()"]


class LoaProcess:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.database_url = f"sqlite:///{self.directory / 'loa.db'}"
        self.env = dict(os.environ)
        # Settings of the developer's shell or of another test must not leak in.
        for name in list(self.env):
            if name.startswith("LOA_"):
                del self.env[name]
        self.env.update({
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "LOA_ENVIRONMENT": "test",
            "LOA_DATABASE_URL": self.database_url,
            "LOA_API_HOST": "127.0.0.1",
            "LOA_API_PORT": str(self.api_port),
        })
        self.env.update(env)
        self.token: str | None = None
        self.api = httpx.Client(base_url=self.api_url, timeout=30.0)
        self._process: subprocess.Popen[bytes] | None = None
        self.stderr_path = self.directory / "service.stderr.log"
        self.stdout_path = self.directory / "service.stdout.log"

    # -- the CLI ----------------------------------------------------------------------------------

    def run_cli(self, *args: str, check: bool = True, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        """``loa ARGS`` in its own process with the service's environment (same database, same
        broker settings), as an operator on the server would run it."""
        result = subprocess.run([*loa_command(), *args], cwd=self.directory, env=self.env, capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise AssertionError(f"loa {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> LoaProcess:
        self.run_cli("users", "create", "admin", "--role", "admin", "--token-only")
        out = self.run_cli("tokens", "create", "admin", "--name", "security-tests").stdout
        tokens = [line.strip() for line in out.splitlines() if _TOKEN_LINE.match(line.strip())]
        assert tokens, f"no token in the output of loa tokens create:\n{out}"
        self.token = tokens[0]
        self.api.headers["Authorization"] = f"Bearer {self.token}"
        with self.stdout_path.open("ab") as out_file, self.stderr_path.open("ab") as err_file:
            self._process = subprocess.Popen([*loa_command(), "serve"], cwd=self.directory, env=self.env,
                                             stdout=out_file, stderr=err_file, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.api_port, timeout=START_TIMEOUT_S)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"loa serve exited with {self._process.returncode}")
                try:
                    status = self.api.get("/api/v1/ingest/status")
                    if status.status_code == 200 and status.json().get("mqtt_connected"):
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            raise RuntimeError("loa serve did not connect to its broker")
        except BaseException as exc:
            self.stop()
            raise RuntimeError(f"loa serve did not start: {exc}\n{self.log[-4000:]}") from None

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # uvicorn's orderly shutdown
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self._process = None

    def close(self) -> None:
        self.stop()
        self.api.close()

    @property
    def pid(self) -> int:
        assert self._process is not None, "the service is not running"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """What the service wrote on stderr (its log)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    # -- the API ------------------------------------------------------------------------------

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201, 202), **kwargs: Any) -> Any:
        """One API call, its JSON answer."""
        response = self.api.request(method, f"/api/v1{path}", **kwargs)
        expected = (expect,) if isinstance(expect, int) else expect
        if response.status_code not in expected:
            raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text}")
        return response.json() if response.content else None


def random_secret() -> str:
    return secrets.token_urlsafe(24)
