"""The production stack's files: docker-compose.yml validates with every service, the `sim`
profile, volumes and healthchecks; it refuses to start without secrets; and the container's
Mosquitto configuration is the production one with container paths only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"LOA_MQTT_PASSWORD": "x", "LOA_MOSQUITTO_ADMIN_PASSWORD": "y", "POSTGRES_PASSWORD": "z",
           "INFLUXDB_ADMIN_PASSWORD": "i", "LOA_INFLUX_TOKEN": "t", "LOA_GRAFANA_INFLUX_PASSWORD": "gi",
           "LOA_GRAFANA_POSTGRES_PASSWORD": "gp", "GRAFANA_ADMIN_PASSWORD": "ga"}
LONG_RUNNING = {"mosquitto", "postgres", "influxdb", "fleet-service", "grafana"}
ONE_SHOT = {"db-migrate", "grafana-reader"}


def compose_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing; scripts/bootstrap --tests installs it")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), *args, "config"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose_config(SECRETS, "--profile", "sim")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_file_validates_and_wires_the_service_to_its_servers(config):
    services = config["services"]
    assert set(services) == LONG_RUNNING | ONE_SHOT | {"simulated-receivers"}
    service = services["fleet-service"]["environment"]
    assert service["LOA_BROKER"] == "mosquitto" and service["LOA_MQTT_HOST"] == "mosquitto"
    assert service["LOA_DATABASE_URL"].startswith("postgresql+psycopg://loa:z@postgres")
    assert service["LOA_INFLUX_URL"] == "http://influxdb:8086" and service["LOA_INFLUX_TOKEN"] == "t"
    assert (service["LOA_INFLUX_ORG"], service["LOA_INFLUX_BUCKET"]) == ("loa", "loa")
    assert services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == "t"
    assert services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_BUCKET"] == "loa"


def test_every_long_running_service_has_a_healthcheck_and_restarts(config):
    for name in LONG_RUNNING:
        service = config["services"][name]
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert config["services"][name]["restart"] == "no"
    depends = config["services"]["fleet-service"]["depends_on"]
    assert depends["db-migrate"]["condition"] == "service_completed_successfully"
    assert depends["mosquitto"]["condition"] == depends["influxdb"]["condition"] == "service_healthy"
    assert config["services"]["grafana"]["depends_on"]["grafana-reader"]["condition"] == "service_completed_successfully"


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each volume; docker-compose 1.29 prints them as "src:target:mode"."""
    return [tuple(v.split(":")[:2]) if isinstance(v, str) else (v["source"], v["target"])
            for v in service.get("volumes", [])]


def _published(service: dict) -> set[tuple[str, int]]:
    out = set()
    for port in service.get("ports", []):
        if isinstance(port, str):  # "127.0.0.1:3000:3000/tcp"
            parts = port.split("/")[0].split(":")
            out.add((parts[0] if len(parts) == 3 else "", int(parts[-2])))
        else:
            out.add((port.get("host_ip", ""), int(port["published"])))
    return out


def test_data_lives_in_named_volumes_and_provisioning_files_exist(config):
    assert set(config["volumes"]) == {"mosquitto-data", "postgres-data", "influxdb-data", "influxdb-config", "grafana-data"}
    for name, service in config["services"].items():
        for source, _target in _mounts(service):
            # The site's own files (TLS certificates, simulator credentials) are not in the repository.
            if source.startswith("/") and not source.endswith(("/broker/certs", "/sim")):
                assert Path(source).exists(), (name, source)
    grafana = {target for _source, target in _mounts(config["services"]["grafana"])}
    assert {"/etc/grafana/provisioning/datasources", "/etc/grafana/provisioning/dashboards",
            "/var/lib/grafana/dashboards/loa"} <= grafana
    # Only the receivers' TLS port is open beyond the host; web UIs and the firmware downloads
    # sit behind a reverse proxy.
    published = set().union(*(_published(s) for s in config["services"].values()))
    assert published == {("", 8883), ("127.0.0.1", 8000), ("127.0.0.1", 8001), ("127.0.0.1", 3000)}


def test_simulated_receivers_are_only_in_the_sim_profile(config):
    assert config["services"]["simulated-receivers"]["profiles"] == ["sim"]
    assert all("profiles" not in s for n, s in config["services"].items() if n != "simulated-receivers")


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_each_secret(missing):
    result = compose_config({k: v for k, v in SECRETS.items() if k != missing})
    assert result.returncode != 0
    assert "set it in .env" in result.stderr


def test_container_mosquitto_config_differs_from_production_only_in_paths():
    production = (ROOT / "broker/mosquitto/mosquitto.conf").read_text().splitlines()
    container = [line for line in (ROOT / "broker/mosquitto/docker/mosquitto.conf").read_text().splitlines()[3:]]
    expected = {
        "plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so": "plugin /usr/lib/mosquitto_dynamic_security.so",
        "plugin_opt_config_file /var/lib/mosquitto/dynamic-security.json":
            "plugin_opt_config_file /mosquitto/data/dynamic-security.json",
        "listener 1883 127.0.0.1": "listener 1883",
        "cafile /etc/mosquitto/certs/ca.crt": "cafile /mosquitto/certs/ca.crt",
        "certfile /etc/mosquitto/certs/server.crt": "certfile /mosquitto/certs/server.crt",
        "keyfile /etc/mosquitto/certs/server.key": "keyfile /mosquitto/certs/server.key",
        "persistence_location /var/lib/mosquitto/": "persistence_location /mosquitto/data/",
        "log_dest syslog": "log_dest stdout",
    }
    assert container == [expected.get(line, line) for line in production]
