"""The production Mosquitto configuration as shipped, and its TLS listener for real."""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.mosquitto_dynsec import init_dynsec_file
from tests.support.mosquitto_production import PRODUCTION_CONFIG, adapt_production_config, production_mosquitto


def directives(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.append((key, value.strip()))
    return out


def test_production_config_says_what_production_needs() -> None:
    d = directives(PRODUCTION_CONFIG.read_text())
    settings = dict(d)
    assert settings["allow_anonymous"] == "false"
    assert settings["persistence"] == "true"
    assert Path(settings["plugin"]).name == "mosquitto_dynamic_security.so"
    assert Path(settings["plugin"]).exists(), "the dynsec plugin is not where the config says"
    assert "plugin_opt_config_file" in settings
    assert int(settings["max_queued_messages"]) > 1000  # the default drops reconnection bursts
    assert {"max_inflight_messages", "max_keepalive", "max_packet_size"} <= settings.keys()
    # Plain MQTT only on the loopback; TLS with all three files, after its own listener line.
    listeners = [v for k, v in d if k == "listener"]
    assert listeners == ["1883 127.0.0.1", "8883"]
    tls_at = d.index(("listener", "8883"))
    assert {"cafile", "certfile", "keyfile"} <= {k for k, _ in d[tls_at:]}
    assert not {"cafile", "certfile", "keyfile"} & {k for k, _ in d[:tls_at]}


def test_every_tuning_value_says_why() -> None:
    lines = PRODUCTION_CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("max_", "autosave_interval", "set_tcp_nodelay", "queue_qos0")):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_the_test_adaptation_changes_only_ports_paths_tls_and_user(tmp_path: Path) -> None:
    original = directives(PRODUCTION_CONFIG.read_text())
    adapted = directives(adapt_production_config(PRODUCTION_CONFIG.read_text(), port=12345, directory=tmp_path,
                                                 dynsec_file=tmp_path / "d.json"))
    changed = {"listener", "plugin_opt_config_file", "persistence_location", "log_dest", "user",
               "cafile", "certfile", "keyfile", "tls_version", "require_certificate"}
    assert [x for x in original if x[0] not in changed] == [x for x in adapted if x[0] not in changed]
    assert ("listener", "12345 127.0.0.1") in adapted
    assert not any(k in {"cafile", "certfile", "keyfile"} for k, _ in adapted)


def test_init_refuses_to_overwrite_a_dynsec_file(tmp_path: Path) -> None:
    path = init_dynsec_file(tmp_path / "dynsec.json", "admin", "secret-1")
    assert '"username":\t"admin"' in path.read_text()
    assert path.stat().st_mode & 0o077 == 0
    with pytest.raises(FileExistsError):
        init_dynsec_file(path, "admin", "secret-2")


def test_receivers_log_in_over_tls_on_the_tls_listener(tmp_path: Path) -> None:
    with production_mosquitto(tmp_path, tls=True) as broker:
        broker.accounts.add_receiver("rx-tls", "pw-tls")
        assert broker.tls_port and broker.ca_file

        def connect(password: str, verify: bool = True) -> tuple[bool, str]:
            done = threading.Event()
            result: list = []
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rx-tls", protocol=mqtt.MQTTv311,
                                 reconnect_on_failure=False)
            client.username_pw_set("rx-tls", password)
            context = ssl.create_default_context(cafile=str(broker.ca_file) if verify else None)
            client.tls_set_context(context)
            client.on_connect = lambda c, u, f, rc, p: (result.append(rc), done.set())
            try:
                client.connect(broker.host, broker.tls_port, keepalive=30)
            except ssl.SSLError as exc:
                return False, f"tls: {exc.reason}"
            client.loop_start()
            try:
                assert done.wait(5), "no CONNACK over TLS"
                return not result[0].is_failure, str(result[0])
            finally:
                client.disconnect()
                client.loop_stop()

        assert connect("pw-tls") == (True, "Success")
        assert connect("wrong")[0] is False
        ok, why = connect("pw-tls", verify=False)  # a client that does not trust our CA
        assert not ok and why.startswith("tls:")
