"""The firmware, in a real micropython process limited to a 128 KiB heap, against a production
Mosquitto with per-receiver logins: what reaches the broker must be what docs/protocol.md
says, decoded by the service's own decoder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import paho.mqtt.client as paho

from fleet_service.protocol import Ack, PlayStatus, command_topic, decode, decode_command
from tests.firmware.conftest import (Device, NtpServer, Observer, compile_app, device_config, install_app,
                                     run_micropython, wait_for)
from tests.support.mosquitto import mosquitto
from tests.support.mosquitto_production import ProductionBroker, production_mosquitto
from tests.support.stream_server import StreamServer

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
    mine = [m for m in observer.messages if f"/{rid}/" in m.topic and not m.topic.endswith("/cmd")]
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


# -- commands, acknowledgements, priorities, schedule, clock (protocol 1.1) ----------------------
#
# The receiver is driven as the service drives it: commands published to .../cmd with the
# service's login; what it answers (.../ack, .../play, .../event, .../telemetry) is validated
# with the protocol's pydantic models. Streams come from a real HTTP server sending real MP3.


# The whole firmware with the stream player, commands, schedule and clock holds about 113 KiB
# of a heap while playing (its modules' bytecode included, as .mpy files on flash are loaded into
# RAM); in 128 KiB the heap is then too fragmented for the stream buffer. Until the firmware is
# slimmed or frozen into the MicroPython image, receivers that play run with this (docs/firmware.md).
PLAYING_HEAPSIZE = "192k"


class CompiledDevice(Device):
    """A receiver whose flash holds compiled modules; ``env`` adds to its process's environment."""

    env: dict[str, str] = {}

    def start(self, heapsize: str = PLAYING_HEAPSIZE) -> Device:
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return super().start(heapsize)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def receiver(root: Path, cfg: dict[str, object], env: dict[str, str] | None = None) -> CompiledDevice:
    device = CompiledDevice(root, cfg)
    device.env = env or {}
    compile_app(root / "a")
    return device


# The simulated board's RTC is the host's clock; libfaketime (Debian package faketime) sets it
# off for the receiver's process alone, as an ESP32's RTC is off after power-on. Its monotonic
# clock (ticks_ms, uptime) is left alone.
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def skewed_clock(seconds: int) -> dict[str, str]:
    assert Path(LIBFAKETIME).exists(), "libfaketime is not installed: apt-get install faketime"
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


class Service:
    """The service's side of the wire: publishes commands (QoS 1) with the service login."""

    def __init__(self, broker: ProductionBroker, rid: str) -> None:
        self.topic = command_topic(rid)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"service-{rid}")
        self.client.username_pw_set(broker.service_username, broker.service_password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, op: str, cid: str | None = "", *, pri: str = "normal", exp: float | None = None,
             **fields: object) -> dict:
        now = int(time.time())
        cmd: dict[str, object] = {"v": 1, "id": cid, "op": op, "pri": pri, "ts": now,
                                  "exp": int(exp if exp is not None else now + 600), **fields}
        if cid is None:
            del cmd["id"]
        decode_command(json.dumps(cmd).encode())  # the service only ever sends valid commands
        self.raw(json.dumps(cmd).encode())
        return cmd

    def raw(self, payload: bytes) -> None:
        self.client.publish(self.topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def acks(observer: Observer, cid: str, count: int = 1, timeout: float = 20.0) -> list[dict]:
    got = observer.wait("ack", lambda m: m["id"] == cid, count=count, timeout=timeout)
    for ack in got:
        Ack.model_validate(ack)
    return got


def play_status(observer: Observer, predicate=lambda m: True, timeout: float = 20.0) -> dict:
    status = observer.wait("play", predicate, timeout=timeout)[-1]
    PlayStatus.model_validate(status)
    return status


def events(observer: Observer, kind: str) -> list[dict]:
    return observer.find("event", lambda m: m["kind"] == kind)


def test_play_stop_volume_with_acks_play_status_and_events(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-play"
    broker.accounts.add_receiver(rid, "pw-play")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    device = receiver(tmp_path / "flash", device_config(broker, rid, "pw-play"))
    with StreamServer(64) as stream:
        try:
            device.start()
            boot = play_status(observer)
            assert (boot["st"], boot["src"], boot["why"], boot["vol"]) == ("idle", "none", "boot", 50)
            observer.wait("telemetry")

            service.send("play", "p1", url=stream.url())
            assert [a["st"] for a in acks(observer, "p1", 2)] == ["accepted", "done"]
            playing = play_status(observer, lambda m: m["st"] == "playing")
            assert (playing["src"], playing["ref"], playing["pri"], playing["url"], playing["why"]) == (
                "cmd", "p1", "normal", stream.url(), "command")
            [started] = observer.wait("event", lambda m: m["kind"] == "play_started")
            assert started["detail"] == "cmd:p1"
            report = observer.wait("telemetry", lambda m: m["st"] == "playing" and m["sb"] > 8000)[-1]
            assert report["kbps"] == 64 and report["vol"] == 50 and report["amp"] == "on"

            # Volume: bounded, unranked, reported.
            service.raw(json.dumps({"v": 1, "id": "v1", "op": "volume", "ts": 1, "exp": 2**31, "vol": 101}).encode())
            assert acks(observer, "v1")[0] == {**acks(observer, "v1")[0], "st": "rejected", "why": "volume_range"}
            service.send("volume", "v2", vol=30)
            assert acks(observer, "v2")[0]["st"] == "done"
            assert play_status(observer, lambda m: m["vol"] == 30)["st"] == "playing"
            observer.wait("telemetry", lambda m: m["vol"] == 30)

            service.send("stop", "s1")
            assert acks(observer, "s1")[0]["st"] == "done"
            stopped = play_status(observer, lambda m: m["why"] == "stopped")
            assert (stopped["st"], stopped["src"]) == ("idle", "none") and "pri" not in stopped
            [ended] = observer.wait("event", lambda m: m["kind"] == "play_stopped")
            assert ended["detail"] == "stopped:p1"
            service.send("stop", "s2")
            assert (acks(observer, "s2")[0]["st"], acks(observer, "s2")[0]["why"]) == ("done", "nothing_playing")

            # Bad commands: rejected with a reason, or reported when there is no id to answer.
            service.raw(json.dumps({"v": 1, "id": "m1", "op": "dance", "ts": 1, "exp": 2**31}).encode())
            service.raw(json.dumps({"v": 1, "id": "m2", "op": "play", "ts": 1, "exp": 2**31, "url": "ftp://x"}).encode())
            service.raw(json.dumps({"v": 1, "op": "stop", "ts": 1, "exp": 2**31}).encode())
            service.raw(b"{not json")
            assert acks(observer, "m1")[0]["why"] == "unknown_op" and acks(observer, "m1")[0]["st"] == "rejected"
            assert acks(observer, "m2")[0]["why"] == "bad_url"
            bad = observer.wait("event", lambda m: m["kind"] == "bad_command", count=2)
            assert sorted(e["detail"] for e in bad) == ["malformed", "malformed"]

            # The same command delivered again: the stored outcome, never a second play.
            requests = stream.requests
            service.send("play", "p1", url=stream.url())
            again = acks(observer, "p1", 3)[-1]
            assert (again["st"], again.get("dup")) == ("done", True)
            time.sleep(1.0)
            assert stream.requests == requests and len(events(observer, "play_started")) == 1
            assert play_status(observer)["st"] == "idle"
            assert device.stop() == 0, device.output
            assert_all_decode(observer, rid)
        finally:
            device.close()
            service.close()
            observer.close()


def test_priorities_emergency_preempts_and_only_an_equal_stop_ends_it(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-prio"
    broker.accounts.add_receiver(rid, "pw-prio")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    device = receiver(tmp_path / "flash", device_config(broker, rid, "pw-prio"))
    with StreamServer(64) as stream:
        try:
            device.start()
            play_status(observer)
            service.send("play", "n1", url=stream.url())
            assert acks(observer, "n1", 2)[-1]["st"] == "done"
            service.send("play", "e1", pri="emergency", url=stream.url("/live.mp3?e=1"))
            assert [a["st"] for a in acks(observer, "e1", 2)] == ["accepted", "done"]
            now = play_status(observer, lambda m: m.get("ref") == "e1" and m["st"] == "playing")
            assert (now["pri"], now["src"]) == ("emergency", "cmd")
            stops = observer.wait("event", lambda m: m["kind"] == "play_stopped")
            assert stops[0]["detail"] == "preempted:n1"

            service.send("play", "n2", url=stream.url())
            service.send("stop", "s1")
            service.send("stop", "s2", pri="priority")
            for cid in ("n2", "s1", "s2"):
                assert (acks(observer, cid)[0]["st"], acks(observer, cid)[0]["why"]) == ("rejected", "lower_priority")
            service.send("volume", "v1", pri="normal", vol=80)  # volume is not ranked
            assert acks(observer, "v1")[0]["st"] == "done"
            assert play_status(observer, lambda m: m["vol"] == 80)["ref"] == "e1"

            service.send("stop", "s3", pri="emergency")
            assert acks(observer, "s3")[0]["st"] == "done"
            assert play_status(observer, lambda m: m["why"] == "stopped")["st"] == "idle"
            service.send("play", "n3", url=stream.url())  # released: normal plays again
            assert acks(observer, "n3", 2)[-1]["st"] == "done"
            service.send("play", "p1", pri="priority", url="http://127.0.0.1:9/nothing-listens")
            assert [a["st"] for a in acks(observer, "p1", 2)] == ["accepted", "failed"]
            assert acks(observer, "p1", 2)[-1]["why"] == "stream_unreachable"
            status = play_status(observer, lambda m: m["why"] == "stream_error")
            assert status["src"] == "none"
            assert [e["detail"] for e in events(observer, "play_stopped")] == [
                "preempted:n1", "stopped:e1", "preempted:n3"]
            assert device.stop() == 0
            assert_all_decode(observer, rid)
        finally:
            device.close()
            service.close()
            observer.close()


def test_config_and_reboot_are_carried_out_once_even_when_delivered_again(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-reboot"
    broker.accounts.add_receiver(rid, "pw-reboot")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    device = receiver(tmp_path / "flash", device_config(broker, rid, "pw-reboot"))
    try:
        device.start()
        observer.wait("telemetry")
        service.raw(json.dumps({"v": 1, "id": "k0", "op": "config", "ts": 1, "exp": 2**31, "set": {"apn": "x"}}).encode())
        assert (acks(observer, "k0")[0]["st"], acks(observer, "k0")[0]["why"]) == ("rejected", "unknown_setting")
        service.send("config", "k1", set={"telemetry_interval": 10, "ntp": "ntp.example.vn"})
        assert acks(observer, "k1")[0]["st"] == "done"
        stored = device.read_json("config.json")
        assert stored["telemetry_interval"] == 10 and stored["ntp"] == "ntp.example.vn" and stored["id"] == rid

        service.send("reboot", "r1")
        assert acks(observer, "r1")[0]["st"] == "done"
        [goodbye] = observer.wait("state", lambda m: m["state"] == "offline")
        assert goodbye["reason"] == "shutdown" and goodbye["session"] == 1
        assert device.wait(15) == 0  # board.reset(): the simulated board's process ends

        device.start()  # the board comes back
        observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 2)
        # The service delivers both again (it re-sends at every birth until it has an outcome).
        service.send("reboot", "r1")
        service.send("config", "k1", set={"telemetry_interval": 10})
        assert acks(observer, "r1", 2)[-1] == {**acks(observer, "r1", 2)[-1], "st": "done", "dup": True, "session": 2}
        assert acks(observer, "k1", 2)[-1]["dup"] is True
        # The new telemetry interval is in force since this connection.
        reports = observer.wait("telemetry", lambda m: m["session"] == 2, count=2, timeout=20)
        assert reports[1]["ts"] - reports[0]["ts"] >= 9
        assert device.process is not None and device.process.poll() is None  # not rebooted again
        assert device.stop() == 0
        assert_all_decode(observer, rid)
    finally:
        device.close()
        service.close()
        observer.close()


def test_clock_sync_corrects_a_skewed_board_and_expiry_goes_by_the_synced_clock(
        broker: ProductionBroker, ntp_server: NtpServer, tmp_path: Path) -> None:
    rid = "fw-clock"
    broker.accounts.add_receiver(rid, "pw-clock")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    cfg = device_config(broker, rid, "pw-clock", ntp=ntp_server.host, ntp_port=ntp_server.port)
    device = receiver(tmp_path / "flash", cfg, env=skewed_clock(3600))
    try:
        device.start()
        report = observer.wait("telemetry", lambda m: "sync" in m, timeout=15)[-1]
        assert abs(report["skew"] - 3_600_000) < 1500 and report["sync"] <= 2
        assert abs(report["ts"] - time.time()) < 3  # corrected: the board's RTC says an hour later
        [sync] = observer.wait("event", lambda m: m["kind"] == "clock_sync")
        source, _, skew = sync["detail"].partition(":")
        assert source == "ntp" and abs(int(skew) - 3_600_000) < 1500 and abs(sync["ts"] - time.time()) < 5
        # Expiry by the corrected clock: by the board's own clock this one expired an hour ago.
        now = time.time()
        service.send("stop", "x1", exp=now + 60)
        assert (acks(observer, "x1")[0]["st"], acks(observer, "x1")[0]["why"]) == ("done", "nothing_playing")
        service.send("stop", "x2", exp=now - 30)
        assert acks(observer, "x2")[0]["st"] == "expired"
        service.send("stop", "x2", exp=now + 60)  # the same id again: the stored outcome
        assert acks(observer, "x2", 2)[-1] == {**acks(observer, "x2", 2)[-1], "st": "expired", "dup": True}
        assert device.stop() == 0
        assert_all_decode(observer, rid)
    finally:
        device.close()
        service.close()
        observer.close()


def test_an_unsynced_receiver_neither_checks_expiry_nor_runs_its_schedule(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-nosync"
    broker.accounts.add_receiver(rid, "pw-nosync")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    # No NTP server and a board without network time: never synced.
    device = receiver(tmp_path / "flash", device_config(broker, rid, "pw-nosync", ntp=""))
    with StreamServer(64) as stream:
        try:
            device.start()
            observer.wait("telemetry")
            service.send("stop", "y1", exp=time.time() - 30)
            assert acks(observer, "y1")[0]["st"] == "done"
            tz, local = local_offset()
            service.send("schedule", "y2", ver=5, tz=tz, slots=[
                {"id": "now", "s": hms(local - 5), "e": hms(local + 300), "u": stream.url()}])
            assert acks(observer, "y2")[0]["st"] == "done"
            observer.wait("telemetry", lambda m: m.get("sched") == 5)
            time.sleep(2)
            assert all(m["st"] == "idle" for m in observer.find("play")) and stream.requests == 0
            assert all("sync" not in m and "skew" not in m for m in observer.find("telemetry"))
            assert device.stop() == 0
        finally:
            device.close()
            service.close()
            observer.close()


def local_offset() -> tuple[int, int]:
    """A schedule offset (minutes) that puts the station's local time near noon, so that slots
    a few seconds from now never cross midnight; and the local second of the day now."""
    tz, local, _ = local_clock()
    return tz, local


def local_clock() -> tuple[int, int, int]:
    """local_offset(), and the Unix second at which that local second began."""
    now = int(time.time())
    tz = round((12 * 3600 - now % 86400) / 3600) * 60
    return tz, (now + tz * 60) % 86400, now


def hms(second_of_day: int) -> str:
    return f"{second_of_day // 3600:02}:{second_of_day // 60 % 60:02}:{second_of_day % 60:02}"


class DurableObserver(Observer):
    """An Observer with a persistent session, as the service's subscription would be: what the
    receiver publishes between a broker restart and the observer's own reconnect is kept for
    it by the broker."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"durable-{self.rid}",
                                   clean_session=False)
        self._client.username_pw_set(self.username, self.password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.reconnect_delay_set(0.1, 0.5)


def test_a_slot_plays_on_time_while_offline_and_is_reported_after_the_reconnect(
        ntp_server: NtpServer, tmp_path: Path) -> None:
    rid = "fw-sched"
    # Its own broker, which this test stops: the receiver is cut off from the service while the
    # stream stays reachable.
    with production_mosquitto(tmp_path / "broker") as broker, StreamServer(64) as stream:
        broker.accounts.add_receiver(rid, "pw-sched")
        observer = DurableObserver(broker.host, broker.port, broker.service_username, broker.service_password,
                                   rid).start()
        service = Service(broker, rid)
        cfg = device_config(broker, rid, "pw-sched", ntp=ntp_server.host, ntp_port=ntp_server.port)
        device = receiver(tmp_path / "flash", cfg)
        try:
            device.start()
            observer.wait("telemetry", lambda m: "sync" in m, timeout=15)
            tz, local, unix_now = local_clock()
            start, end = local + 10, local + 16
            slot = {"id": "tin-sang", "s": hms(start), "e": hms(end), "u": stream.url(), "p": "priority", "vol": 65}
            service.send("schedule", "sc1", ver=11, tz=tz, slots=[slot])
            assert acks(observer, "sc1")[0]["st"] == "done"
            # A schedule with overlapping slots is refused as a whole; the one held stays.
            service.raw(json.dumps({"v": 1, "id": "sc2", "op": "schedule", "ts": 1, "exp": 2**31, "ver": 12, "tz": tz,
                                    "slots": [slot, {**slot, "id": "other", "s": hms(end - 2), "e": hms(end + 60)}]}).encode())
            assert (acks(observer, "sc2")[0]["st"], acks(observer, "sc2")[0]["why"]) == ("rejected", "bad_schedule")
            assert play_status(observer, lambda m: m.get("sched") == 11)["st"] == "idle"
            observer.wait("telemetry", lambda m: m.get("sched") == 11)
            slot_start = unix_now + (start - local)
            slot_end = unix_now + (end - local)

            broker.server.stop()  # offline from here on
            wait_for(lambda: "connection lost" in device.output, 10, "the receiver to notice")
            try:
                wait_for(lambda: stream.requests >= 1, 20, "the slot to start its stream")
            except AssertionError:
                raise AssertionError(device.output + "\nEXIT " + str(device.process and device.process.poll())
                                     + "\n" + broker.log[-3000:]) from None
            assert abs(time.time() - slot_start) < 1.5
            wait_for(lambda: "playback of sched" in device.output or time.time() > slot_end + 2, 15, "the slot end")
            time.sleep(max(0.0, slot_end + 1.5 - time.time()))
            back = time.time()
            broker.server.restart()  # the admin login is not needed again

            try:
                [started] = observer.wait("event", lambda m: m["kind"] == "play_started", timeout=30)
            except AssertionError:
                raise AssertionError(device.output + "\n" + broker.log[-3000:]) from None
            [stopped] = observer.wait("event", lambda m: m["kind"] == "play_stopped", timeout=10)
            assert started["detail"] == "sched:tin-sang" and stopped["detail"] == "ended:tin-sang"
            assert abs(started["ts"] - slot_start) <= 2 and abs(stopped["ts"] - slot_end) <= 2  # when it happened
            assert started["ts"] < back - 1 and stopped["session"] >= 2  # sent after the next birth
            status = play_status(observer, lambda m: m["session"] >= 2)
            assert (status["st"], status["why"], status["vol"], status["sched"]) == ("idle", "ended", 65, 11)
            assert device.stop() == 0
            assert_all_decode(observer, rid)
        finally:
            device.close()
            service.close()
            observer.close()


def test_the_schedule_survives_a_power_loss_and_a_slot_in_progress_resumes(
        broker: ProductionBroker, ntp_server: NtpServer, tmp_path: Path) -> None:
    rid = "fw-resume"
    broker.accounts.add_receiver(rid, "pw-resume")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    cfg = device_config(broker, rid, "pw-resume", ntp=ntp_server.host, ntp_port=ntp_server.port)
    device = receiver(tmp_path / "flash", cfg)
    with StreamServer(64) as stream:
        try:
            device.start()
            observer.wait("telemetry", lambda m: "sync" in m, timeout=15)
            tz, local = local_offset()
            service.send("schedule", "sr1", ver=21, tz=tz, slots=[
                {"id": "chieu", "s": hms(local + 2), "e": hms(local + 120), "u": stream.url()}])
            assert acks(observer, "sr1")[0]["st"] == "done"
            play_status(observer, lambda m: m.get("ref") == "chieu" and m["st"] == "playing")
            device.power_loss()

            device.start()
            # From flash at once, before any sync...
            assert observer.wait("telemetry", lambda m: m["session"] == 2)[0]["sched"] == 21
            # ...and the slot resumes once the clock is synced.
            status = play_status(observer, lambda m: m["session"] == 2 and m["st"] == "playing")
            assert (status["src"], status["ref"], status["why"], status["sched"]) == ("sched", "chieu", "schedule", 21)
            observer.wait("event", lambda m: m["kind"] == "play_started" and m["session"] == 2)

            # Stopped by an operator, the slot stays stopped for the rest of its time.
            service.send("stop", "sr2")
            assert acks(observer, "sr2")[0]["st"] == "done"
            play_status(observer, lambda m: m["why"] == "stopped")
            requests = stream.requests
            time.sleep(2)
            assert stream.requests == requests and observer.find("play")[-1]["st"] == "idle"
            assert device.stop() == 0
            assert_all_decode(observer, rid)
        finally:
            device.close()
            service.close()
            observer.close()


def test_events_raised_offline_are_kept_sixteen_at_most_oldest_dropped(tmp_path: Path) -> None:
    compiled = tmp_path / "fw"
    install_app(compiled)
    compile_app(compiled)
    (tmp_path / "config.json").write_text(json.dumps({"id": "rx-q", "password": "p", "host": "127.0.0.1"}))
    script = """
from loa import app, config
from loa.hal.sim import SimBoard
from loa.state import State
cfg = config.load()
rx = app.Receiver(SimBoard(cfg), cfg, State(), log=lambda *a: None)
for i in range(20):
    rx.raise_event("play_started", "cmd:c%d" % i)
print(len(rx.events), rx.events[0][2], rx.events[-1][2])
"""
    result = run_micropython(script, tmp_path, paths=(str(compiled),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["16", "cmd:c4", "cmd:c19"]
