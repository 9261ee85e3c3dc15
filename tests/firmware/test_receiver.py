"""The firmware, in a real micropython process limited to a 128 KiB heap, against a production
Mosquitto with per-receiver logins: what reaches the broker must be what docs/protocol.md
says, decoded by the service's own decoder."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import paho.mqtt.client as paho

from fleet_service.protocol import decode
from tests.firmware.conftest import Device, Observer, device_config, wait_for
from tests.support.mosquitto import mosquitto
from tests.support.mosquitto_production import ProductionBroker, production_mosquitto

MAX_BYTES = 4096


def observe(broker: ProductionBroker, rid: str) -> Observer:
    return Observer(broker.host, broker.port, broker.service_username, broker.service_password, rid).start()


def retained_state(broker: ProductionBroker, rid: str) -> dict:
    """What a subscriber arriving now gets as the retained state."""
    late = observe(broker, rid)
    try:
        [state] = late.wait("state")
        [message] = [m for m in late.messages if m.topic.endswith("/state")]
        assert message.retain
        return state
    finally:
        late.close()


def assert_all_decode(observer: Observer, rid: str) -> None:
    mine = [m for m in observer.messages if f"/{rid}/" in m.topic]
    assert mine
    for m in mine:
        decode(m.topic, m.payload, max_bytes=MAX_BYTES)  # raises DecodeError if not


def test_birth_telemetry_goodbye_and_a_session_counter_that_persists(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-basic"
    broker.accounts.add_receiver(rid, "pw-basic")
    observer = observe(broker, rid)
    device = Device(tmp_path / "flash", device_config(broker, rid, "pw-basic"))
    try:
        device.start()
        [birth] = observer.wait("state", lambda m: m["state"] == "online")
        assert birth == {"v": 1, "state": "online", "session": 1, "reason": "boot", "fw": "loa-fw-0.1.0"}
        [event] = observer.wait("event")
        assert (event["kind"], event["detail"], event["session"]) == ("boot", "power_on", 1)
        reports = observer.wait("telemetry", count=2)
        assert [r["seq"] for r in reports[:2]] == [0, 1]
        first = reports[0]
        assert first["session"] == 1 and first["rst"] == "power_on" and first["fw"] == "loa-fw-0.1.0"
        assert first["csq"] == 20 and first["rssi"] == -113 + 2 * 20
        assert 0 < first["mem"] < 128 * 1024
        assert abs(first["ts"] - time.time()) < 5
        assert retained_state(broker, rid)["state"] == "online"

        assert device.stop() == 0, device.output
        [goodbye] = observer.wait("state", lambda m: m["state"] == "offline")
        assert goodbye == {"v": 1, "state": "offline", "session": 1, "reason": "shutdown"}
        assert retained_state(broker, rid) == goodbye
        assert device.read_json("state.json") == {"session": 1}

        # Next start: the counter goes on from flash, never reused.
        device.start()
        observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 2)
        assert device.stop() == 0, device.output
        observer.wait("state", lambda m: m == {"v": 1, "state": "offline", "session": 2, "reason": "shutdown"})
        assert device.read_json("state.json") == {"session": 2}
        assert_all_decode(observer, rid)
    finally:
        device.close()
        observer.close()


def test_power_loss_publishes_the_will_and_the_next_boot_takes_a_new_session(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-power"
    broker.accounts.add_receiver(rid, "pw-power")
    observer = observe(broker, rid)
    device = Device(tmp_path / "flash", device_config(broker, rid, "pw-power", keepalive=2))
    try:
        device.start()
        observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
        observer.wait("telemetry")
        device.power_loss()
        [will] = observer.wait("state", lambda m: m["state"] == "offline", timeout=6)
        assert will == {"v": 1, "state": "offline", "session": 1, "reason": "lost"}
        assert retained_state(broker, rid) == will

        device.start()
        [birth] = observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 2)
        assert birth["reason"] == "boot" and "off" not in birth
        observer.wait("event", lambda m: m["session"] == 2 and m["kind"] == "boot")
        assert device.stop() == 0
        assert_all_decode(observer, rid)
    finally:
        device.close()
        observer.close()


def test_reconnects_after_a_broker_restart(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-restart"
    broker.accounts.add_receiver(rid, "pw-restart")
    observer = observe(broker, rid)
    device = Device(tmp_path / "flash", device_config(broker, rid, "pw-restart"))
    try:
        device.start()
        observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
        observer.wait("telemetry")
        broker.restart()
        [birth] = observer.wait("state", lambda m: m["state"] == "online" and m.get("reason") == "reconnect",
                                timeout=15)
        assert birth["session"] >= 2 and 0 <= birth["off"] < 15
        [event] = observer.wait("event", lambda m: m["kind"] == "link_lost")
        assert event["session"] == birth["session"] and event["detail"] == "connection_lost"
        observer.wait("telemetry", lambda m: m["session"] == birth["session"] and m["seq"] == 1)
        assert device.stop() == 0
        assert_all_decode(observer, rid)
    finally:
        device.close()
        observer.close()


def test_a_stale_offline_state_of_an_older_session_is_overwritten_by_the_birth(tmp_path: Path) -> None:
    # A plain broker, so that the test can publish a late Will in the receiver's place.
    with mosquitto(tmp_path / "mosquitto") as server:
        observer = Observer(server.host, server.port, "observer", "x", "fw-late").start()
        cfg = {"id": "fw-late", "password": "x", "host": server.host, "port": server.port, "tls": False,
               "telemetry_interval": 1, "keepalive": 4, "backoff_base": 0.2, "backoff_cap": 1.0}
        device = Device(tmp_path / "flash", cfg)
        try:
            device.start()
            observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
            observer.wait("telemetry")  # subscribed by now
            late = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="late-will")
            late.connect(server.host, server.port)
            late.loop_start()
            late.publish("loa/v1/rx/fw-late/state", b'{"v":1,"state":"offline","session":0,"reason":"lost"}',
                         qos=1, retain=True).wait_for_publish(5)
            late.loop_stop()
            late.disconnect()
            observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1, count=2)
            assert "re-asserting the birth" in device.output
            assert device.stop() == 0
        finally:
            device.close()
            observer.close()


def test_tls_with_the_broker_certificate_checked(tmp_path: Path) -> None:
    with production_mosquitto(tmp_path, tls=True) as broker:
        broker.accounts.add_receiver("fw-tls", "pw-tls")
        assert broker.tls_port is not None and broker.ca_file is not None
        observer = observe(broker, "fw-tls")
        cfg = device_config(broker, "fw-tls", "pw-tls", tls=True, port=broker.tls_port, ca="ca.crt",
                            server_name="localhost")
        device = Device(tmp_path / "flash", cfg)
        shutil.copy(broker.ca_file, device.root / "ca.crt")
        try:
            device.start()
            observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
            observer.wait("telemetry")
            assert device.stop() == 0
            observer.wait("state", lambda m: m["state"] == "offline" and m["reason"] == "shutdown")
        finally:
            device.close()
            observer.close()


def test_a_wrong_password_is_retried_with_backoff_and_never_reuses_a_session(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-badpw"
    broker.accounts.add_receiver(rid, "right")
    device = Device(tmp_path / "flash", device_config(broker, rid, "wrong"))
    try:
        device.start()
        # Mosquitto answers a bad password with "not authorized" (5) to MQTT 3.1.1 clients.
        wait_for(lambda: device.output.count("connection refused: not authorized") >= 2, 10,
                 "two refused attempts")
        assert device.stop() == 0
        # Every attempt took a new counter value, persisted before its CONNECT.
        assert device.read_json("state.json")["session"] >= 2
    finally:
        device.close()


def test_a_broker_that_stops_answering_is_detected_by_the_keepalive(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-frozen"
    broker.accounts.add_receiver(rid, "pw-frozen")
    observer = observe(broker, rid)
    device = Device(tmp_path / "flash", device_config(broker, rid, "pw-frozen", keepalive=2, ping_timeout=2))
    try:
        device.start()
        observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
        observer.wait("telemetry")
        # The broker freezes (the TCP connection stays open, nothing answers): only the
        # missing PINGRESP can tell.
        broker.server.process.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: "PingTimeout" in device.output, 10, "the ping timeout")
        finally:
            broker.server.process.send_signal(signal.SIGCONT)
        [event] = observer.wait("event", lambda m: m["kind"] == "link_lost", timeout=15)
        assert event["detail"] == "ping_timeout" and event["session"] >= 2
        assert device.stop() == 0
    finally:
        device.close()
        observer.close()
