"""Every broker backend the service supports, run the way production runs it, behind one
interface so that a check is written once for all of them.

    backend = BACKENDS["mosquitto"](tmp_path)
    backend.start()                      # the broker (if separate) and ``loa serve``
    rid, password = backend.receiver()   # registered and provisioned through the HTTP API
    backend.mqtt_host, backend.mqtt_port
    backend.run_cli("receivers", "revoke", rid)
    backend.broker_pid(), backend.service_log(), backend.refusal_log()
    backend.stop()

A new backend is one subclass of ``ServiceBackend`` and one entry in ``BACKENDS``.
"""

from __future__ import annotations

import re
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.support.loa_process import LoaProcess, random_secret
from tests.support.ports import free_port

SERVICE_USERNAME = "loa-service"
# The service's MQTT client id before it became one per process: attacks try it as well.
LEGACY_SERVICE_CLIENT_ID = "loa-service"
# Client ids of the tests' own witnesses that log in with the service's rights.
MONITOR_PREFIX = "sec-monitor"

# Capabilities a backend may have (``backend.capabilities``); what a backend lacks comes with
# the reason (``backend.lacking``), which is the skip reason of the checks that need it.
LOGIN_RATE_LIMIT = "login_rate_limit"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


class ServiceBackend:
    """One backend: its broker (if it runs apart) and ``loa serve`` in its own process, with an
    admin token, a station to register receivers at, and what the checks need to observe."""

    name = "?"
    capabilities: frozenset[str] = frozenset()
    lacking: dict[str, str] = {}

    def __init__(self, directory: Path, extra_env: dict[str, str] | None = None) -> None:
        self.directory = Path(directory)
        self.extra_env = dict(extra_env or {})
        self.mqtt_host = "127.0.0.1"
        self.mqtt_port = 0
        self.service: LoaProcess | None = None
        self.station_id: int | None = None
        self._stack = ExitStack()

    # -- life ---------------------------------------------------------------------------------

    def service_env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self) -> ServiceBackend:
        try:
            env = self.service_env()
            env.update(self.extra_env)
            self.service = LoaProcess(self.directory / "service", env)
            self._stack.callback(self.service.close)
            self.service.start()
            region = self.service.call("POST", "/regions", json={"name": "Hùng Sơn", "level": "thị trấn"})
            station = self.service.call("POST", "/stations", json={"region_id": region["id"], "name": "Đài Hùng Sơn"})
            self.station_id = station["id"]
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stack.close()

    # -- what the checks use ------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.service is not None
        return self.service.api_url

    @property
    def token(self) -> str:
        assert self.service is not None and self.service.token is not None
        return self.service.token

    def run_cli(self, *args: str, check: bool = True) -> Any:
        assert self.service is not None
        return self.service.run_cli(*args, check=check)

    def broker_pid(self) -> int:
        raise NotImplementedError

    def service_pid(self) -> int:
        assert self.service is not None
        return self.service.pid

    def service_log(self) -> str:
        assert self.service is not None
        return self.service.log

    def refusal_log(self) -> str:
        """The log in which this backend's broker reports refused logins."""
        raise NotImplementedError

    def refusal_logged(self, address: str, port: int, client_id: str) -> bool:
        """Whether the broker's log tells of the refused login from ``address:port`` under
        ``client_id``, as far as this broker can."""
        raise NotImplementedError

    def monitor_login(self) -> tuple[str, str]:
        """A login with the service's rights (reads everything under loa/v1/rx/), for a
        witness that sees what the service would."""
        raise NotImplementedError

    def client_id_of_service(self) -> str | None:
        """The client id of the running service's MQTT connection, if it can be found."""
        status = self.ingest_status()
        for key in ("mqtt_client_id", "client_id"):
            if isinstance(status.get(key), str) and status[key]:
                return status[key]
        return None

    # -- the registry, through the HTTP API ---------------------------------------------------

    def register(self, prefix: str = "rx") -> str:
        assert self.service is not None
        rid = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.service.call("POST", "/receivers", json={"id": rid, "hardware_id": f"hw-{rid}",
                                                      "station_id": self.station_id})
        return rid

    def provision(self, rid: str) -> str:
        """A new MQTT password for ``rid`` (earlier ones stop working)."""
        assert self.service is not None
        return self.service.call("POST", f"/receivers/{rid}/provision")["mqtt_password"]

    def revoke(self, rid: str) -> None:
        assert self.service is not None
        self.service.call("POST", f"/receivers/{rid}/revoke")

    def receiver(self, prefix: str = "rx") -> tuple[str, str]:
        rid = self.register(prefix)
        return rid, self.provision(rid)

    # -- what the service knows ---------------------------------------------------------------

    def live(self, rid: str) -> dict[str, Any] | None:
        assert self.service is not None
        fleet = self.service.call("GET", "/live/receivers")
        return next((r for r in fleet["receivers"] if r["receiver_id"] == rid), None)

    def ingest_status(self) -> dict[str, Any]:
        assert self.service is not None
        return self.service.call("GET", "/ingest/status")

    def send_command(self, rid: str, volume: int = 40) -> str:
        assert self.service is not None
        created = self.service.call("POST", "/commands", json={"target": {"receiver": rid}, "op": "volume",
                                                                "volume": volume})
        return created["id"]

    def target_status(self, command_id: str, rid: str) -> str | None:
        assert self.service is not None
        targets = self.service.call("GET", f"/commands/{command_id}/targets")
        return next((t["status"] for t in targets if t["receiver_id"] == rid), None)

    def wait_live(self, rid: str, predicate: Any, timeout: float = 10.0) -> dict[str, Any] | None:
        """The receiver's live entry once ``predicate`` holds for it, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            entry = self.live(rid)
            if entry is not None and predicate(entry):
                return entry
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)


class EmbeddedBackend(ServiceBackend):
    """The one-command default: the amqtt broker inside ``loa serve``."""

    name = "embedded"
    capabilities = frozenset({LOGIN_RATE_LIMIT})
    lacking: dict[str, str] = {}

    def service_env(self) -> dict[str, str]:
        self.mqtt_port = free_port()
        self._service_password = random_secret()
        return {
            "LOA_BROKER": "embedded",
            "LOA_MQTT_HOST": self.mqtt_host,
            "LOA_MQTT_PORT": str(self.mqtt_port),
            "LOA_MQTT_USERNAME": SERVICE_USERNAME,
            "LOA_MQTT_PASSWORD": self._service_password,
        }

    def broker_pid(self) -> int:
        return self.service_pid()

    def refusal_log(self) -> str:
        return self.service_log()

    def refusal_logged(self, address: str, port: int, client_id: str) -> bool:
        # The service's own log (its stderr): a WARNING naming the address and the client id.
        return any("WARNING" in line and address in line and client_id in line
                   for line in self.service_log().splitlines())

    def monitor_login(self) -> tuple[str, str]:
        return SERVICE_USERNAME, self._service_password


class MosquittoBackend(ServiceBackend):
    """Mosquitto 2.0.11 with the production configuration; the service manages receiver
    logins through the dynamic-security plugin."""

    name = "mosquitto"
    capabilities = frozenset()
    lacking = {
        LOGIN_RATE_LIMIT: "mosquitto: Mosquitto 2.0.11 has no per-address login limit; the production "
                          "deployment limits login attempts at the firewall",
    }

    def service_env(self) -> dict[str, str]:
        from tests.support.mosquitto_production import production_mosquitto

        self.broker = self._stack.enter_context(production_mosquitto(self.directory))
        self.mqtt_port = self.broker.port
        return {
            "LOA_BROKER": "mosquitto",
            "LOA_MQTT_HOST": self.broker.host,
            "LOA_MQTT_PORT": str(self.broker.port),
            "LOA_MQTT_USERNAME": self.broker.service_username,
            "LOA_MQTT_PASSWORD": self.broker.service_password,
            "LOA_MOSQUITTO_ADMIN_USERNAME": self.broker.admin_username,
            "LOA_MOSQUITTO_ADMIN_PASSWORD": self.broker.admin_password,
        }

    def broker_pid(self) -> int:
        return self.broker.server.process.pid

    def refusal_log(self) -> str:
        return self.broker.log

    def refusal_logged(self, address: str, port: int, client_id: str) -> bool:
        # Mosquitto's own log file: the connection from address:port, then its refusal. 2.0.11
        # names a refused client "<unknown>", never by the client id it sent.
        lines = self.broker.log.splitlines()
        for i, line in enumerate(lines):
            if f"New connection from {address}:{port} " in line:
                return any("not authorised" in later and (client_id in later or "<unknown>" in later)
                           for later in lines[i + 1:i + 50])
        return False

    def monitor_login(self) -> tuple[str, str]:
        return self.broker.service_username, self.broker.service_password

    def client_id_of_service(self) -> str | None:
        # Mosquitto logs every login with its client id and username.
        pattern = re.compile(r"New client connected from \S+ as (\S+) \(.*u'" + re.escape(self.broker.service_username) + "'")
        found = [cid for cid in pattern.findall(self.broker.log) if not cid.startswith(MONITOR_PREFIX)]
        return found[-1] if found else super().client_id_of_service()


BACKENDS: dict[str, type[ServiceBackend]] = {
    "embedded": EmbeddedBackend,
    "mosquitto": MosquittoBackend,
}
