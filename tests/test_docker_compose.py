"""The production stack's files: docker-compose.yml validates, and the container's Mosquitto
configuration is the production one with container paths only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SECRETS = {"LOA_MQTT_PASSWORD": "x", "LOA_MOSQUITTO_ADMIN_PASSWORD": "y", "POSTGRES_PASSWORD": "z"}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("docker-compose is missing; scripts/bootstrap --tests installs it")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([tool, "-f", str(ROOT / "docker-compose.yml"), "config"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_compose_file_validates_and_wires_the_service_to_mosquitto_and_postgres():
    result = compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    service = config["services"]["fleet-service"]["environment"]
    assert service["LOA_BROKER"] == "mosquitto" and service["LOA_MQTT_HOST"] == "mosquitto"
    assert service["LOA_DATABASE_URL"].startswith("postgresql+psycopg://loa:z@postgres")
    assert config["services"]["simulated-receivers"]["profiles"] == ["sim"]


def test_compose_refuses_to_start_without_secrets():
    result = compose_config({})
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
