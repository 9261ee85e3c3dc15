"""Production settings refuse what would leave the fleet open."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleet_service.config import Settings

STRONG = "k3Jx9-QpZr_7vLm2Wt8y"


def production(**values: object) -> Settings:
    return Settings(environment="production", mqtt_password=STRONG, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("weak", ["", "   ", "changeme", "secret", "short-one"])
def test_production_refuses_a_weak_service_password(weak: str) -> None:
    with pytest.raises(ValidationError, match="LOA_MQTT_PASSWORD"):
        Settings(environment="production", mqtt_password=weak)


@pytest.mark.parametrize("weak", ["", "loa-admin", "admin"])
def test_production_on_mosquitto_refuses_a_weak_or_empty_admin_password(weak: str) -> None:
    with pytest.raises(ValidationError, match="LOA_MOSQUITTO_ADMIN_PASSWORD"):
        production(broker="mosquitto", mosquitto_admin_password=weak)
    assert production(broker="mosquitto", mosquitto_admin_password=STRONG).broker == "mosquitto"
    # The embedded broker has no admin login to protect.
    assert production(broker="embedded").mosquitto_admin_password == ""


def test_production_refuses_an_embedded_broker_open_to_the_network_without_tls(tmp_path) -> None:
    with pytest.raises(ValidationError, match="LOA_MQTT_TLS_PORT"):
        production(mqtt_host="0.0.0.0")
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    assert production(mqtt_host="0.0.0.0", mqtt_tls_port=8883, mqtt_tls_certfile=str(cert),
                      mqtt_tls_keyfile=str(key)).mqtt_tls_port == 8883
    assert production().mqtt_host == "127.0.0.1"  # loopback only: fine without TLS
    # Elsewhere (a bench, the demo) it is allowed.
    assert Settings(environment="local", mqtt_host="0.0.0.0").mqtt_tls_port is None


def test_a_tls_port_needs_its_certificate() -> None:
    with pytest.raises(ValidationError, match="LOA_MQTT_TLS_CERTFILE"):
        Settings(mqtt_tls_port=8883)
