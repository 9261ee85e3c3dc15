"""A private Mosquitto running Loa's production configuration, ready for the service.

    with production_mosquitto(tmp_path) as broker:
        broker.host, broker.port                        # plain MQTT listener on 127.0.0.1
        broker.service_username, broker.service_password  # the service's login (role loa-service)
        broker.accounts                                 # a connected MosquittoDynsec (admin login)
        broker.accounts.add_receiver("rx-1", "pw")      # a receiver login
        broker.restart()                                # same config, port and files

The adaptation of broker/mosquitto/mosquitto.conf is kept to what a test cannot do otherwise
(all in ``adapt_production_config``): the plain listener moves to a free port, the TLS
listener and its certificate lines go (or, with ``tls=True``, the TLS listener moves to a free
port and uses a throwaway CA and server certificate made with openssl), files go under the
test's directory, the log goes to a file, and the broker runs as the current user. Everything
else (dynsec plugin, no anonymous logins, persistence, queue and keepalive limits) is the
production file as shipped.
"""

from __future__ import annotations

import getpass
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from broker.mosquitto_dynsec import MosquittoDynsec, bootstrap_broker, init_dynsec_file
from tests.support.mosquitto import MosquittoServer, mosquitto_with_config
from tests.support.ports import free_port

PRODUCTION_CONFIG = Path(__file__).resolve().parents[2] / "broker" / "mosquitto" / "mosquitto.conf"

ADMIN_USERNAME = "loa-admin"
SERVICE_USERNAME = "loa-service"

# Directives that belong to the TLS listener: dropped together with it.
_TLS_DIRECTIVES = {"cafile", "capath", "certfile", "keyfile", "tls_version", "require_certificate", "ciphers"}


@dataclass
class ProductionBroker:
    server: MosquittoServer
    accounts: MosquittoDynsec
    admin_username: str
    admin_password: str
    service_username: str
    service_password: str
    dynsec_file: Path
    tls_port: int | None = None
    ca_file: Path | None = None  # the CA that signed the TLS listener's certificate

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def log(self) -> str:
        return self.server.log

    def restart(self, *, wait: float = 10.0) -> None:
        """Restart the broker; returns once the admin connection has come back."""
        self.server.restart()
        self.accounts.start(wait=wait)


def adapt_production_config(text: str, *, port: int, directory: Path, dynsec_file: Path,
                            tls_port: int | None = None, tls_dir: Path | None = None) -> str:
    """The production config with the listeners on local test ports and files under
    ``directory``. Without ``tls_port`` the TLS listener and its certificate lines are dropped;
    with it, the TLS listener moves to ``tls_port`` and reads ca.crt/server.crt/server.key from
    ``tls_dir``."""
    tls_paths = {"cafile": "ca.crt", "certfile": "server.crt", "keyfile": "server.key"}
    out: list[str] = []
    for line in text.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else None
        if key == "listener":
            if words[1] == "1883":
                out.append(f"listener {port} 127.0.0.1")
            elif words[1] == "8883" and tls_port is not None:
                out.append(f"listener {tls_port} 127.0.0.1")
            continue
        if key in _TLS_DIRECTIVES:
            if tls_port is None:
                continue
            if key in tls_paths:
                assert tls_dir is not None
                line = f"{key} {tls_dir / tls_paths[key]}"
        elif key == "plugin_opt_config_file":
            line = f"plugin_opt_config_file {dynsec_file}"
        elif key == "persistence_location":
            line = f"persistence_location {directory}/"
        elif key == "log_dest":
            line = f"log_dest file {directory / 'mosquitto.log'}"
        out.append(line)
    # Run as whoever runs the tests (a root run would otherwise drop to "mosquitto").
    out.append(f"user {getpass.getuser()}")
    return "\n".join(out) + "\n"


def make_test_certificates(directory: Path, host: str = "127.0.0.1") -> Path:
    """A throwaway CA and a server certificate for ``host`` (and localhost), with openssl.
    Writes ca.crt, server.crt, server.key into ``directory`` and returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Loa test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text(f"subjectAltName=DNS:localhost,IP:{host}\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return directory


@contextmanager
def production_mosquitto(directory: Path, *, port: int | None = None,
                         service_username: str = SERVICE_USERNAME,
                         service_password: str | None = None,
                         tls: bool = False) -> Iterator[ProductionBroker]:
    """Start Mosquitto with the production config under ``directory``, create the dynsec file,
    the roles and the service login, and yield a ``ProductionBroker`` with a connected
    ``MosquittoDynsec`` admin connection. With ``tls=True`` the TLS listener runs too, on
    ``broker.tls_port``, with a certificate signed by ``broker.ca_file``."""
    directory = Path(directory) / "mosquitto"
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    admin_password = secrets.token_urlsafe(16)
    service_password = service_password or secrets.token_urlsafe(16)
    dynsec_file = init_dynsec_file(directory / "dynamic-security.json", ADMIN_USERNAME, admin_password)
    tls_port = free_port() if tls else None
    tls_dir = make_test_certificates(directory / "certs") if tls else None
    config = adapt_production_config(PRODUCTION_CONFIG.read_text(), port=port, directory=directory,
                                     dynsec_file=dynsec_file, tls_port=tls_port, tls_dir=tls_dir)
    with mosquitto_with_config(directory, config, port) as server:
        accounts = MosquittoDynsec(server.host, server.port, ADMIN_USERNAME, admin_password)
        try:
            accounts.start(wait=10.0)
            bootstrap_broker(accounts, service_username, service_password)
            yield ProductionBroker(server, accounts, ADMIN_USERNAME, admin_password,
                                   service_username, service_password, dynsec_file,
                                   tls_port, tls_dir / "ca.crt" if tls_dir else None)
        finally:
            accounts.close()


__all__ = ["PRODUCTION_CONFIG", "ProductionBroker", "adapt_production_config", "make_test_certificates",
           "production_mosquitto"]
