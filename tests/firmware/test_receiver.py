"""The firmware, in a real micropython process limited to a 160 KiB heap, against a production
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
from fleet_service.protocol.messages import COMMAND_MAX_BYTES
from tests.firmware.conftest import (Device, NtpServer, Observer, compile_app, device_config, install_app,
                                     run_micropython, skewed_clock, wait_for)
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
        assert birth == {"v": 1, "state": "online", "session": 1, "reason": "boot", "fw": "loa-fw-0.1.0",
                         "hw": "esp32-a7670"}
        [event] = observer.wait("event")
        assert (event["kind"], event["detail"], event["session"]) == ("boot", "power_on", 1)
        reports = observer.wait("telemetry", count=2)
        assert [r["seq"] for r in reports[:2]] == [0, 1]
        first = reports[0]
        assert first["session"] == 1 and first["rst"] == "power_on" and first["fw"] == "loa-fw-0.1.0"
        assert first["csq"] == 20 and first["rssi"] == -113 + 2 * 20
        assert 0 < first["mem"] < 160 * 1024
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
            try:
                observer.wait("state", lambda m: m["state"] == "online" and m["session"] == 1)
            except AssertionError:
                raise AssertionError(device.output) from None
            try:
                observer.wait("telemetry")
            except AssertionError:
                raise AssertionError(device.output) from None
            # Reconnects over TLS, in the same 160 KiB heap, as often as the broker goes away.
            for session in (2, 3):
                broker.restart()
                try:
                    observer.wait("state", lambda m, s=session: m["state"] == "online" and m["session"] == s
                                  and m["reason"] == "reconnect", timeout=15)
                except AssertionError:
                    raise AssertionError(device.output) from None
                observer.wait("telemetry", lambda m, s=session: m["session"] == s)
            assert device.heap()["free"] > 16 * 1024, device.output
            assert device.stop() == 0
            observer.wait("state", lambda m: m["state"] == "offline" and m["reason"] == "shutdown")
        finally:
            device.close()
            observer.close()


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


def test_clock_sync_corrects_a_skewed_board_and_expiry_goes_by_the_synced_clock(
        broker: ProductionBroker, ntp_server: NtpServer, tmp_path: Path) -> None:
    rid = "fw-clock"
    broker.accounts.add_receiver(rid, "pw-clock")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    cfg = device_config(broker, rid, "pw-clock", ntp=ntp_server.host, ntp_port=ntp_server.port)
    device = Device(tmp_path / "flash", cfg)
    try:
        device.start(env=skewed_clock(3600))
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


def local_offset() -> tuple[int, int]:
    """A schedule offset (minutes) that puts the station's local time near noon, so that slots
    a few seconds from now never cross midnight; and the local second of the day now."""
    now = int(time.time())
    tz = round((12 * 3600 - now % 86400) / 3600) * 60
    return tz, (now + tz * 60) % 86400


def hms(second_of_day: int) -> str:
    return f"{second_of_day // 3600:02}:{second_of_day // 60 % 60:02}:{second_of_day % 60:02}"


def test_the_schedule_survives_a_power_loss_and_a_slot_in_progress_resumes(
        broker: ProductionBroker, ntp_server: NtpServer, tmp_path: Path) -> None:
    rid = "fw-resume"
    broker.accounts.add_receiver(rid, "pw-resume")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    cfg = device_config(broker, rid, "pw-resume", ntp=ntp_server.host, ntp_port=ntp_server.port)
    device = Device(tmp_path / "flash", cfg)
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


def largest_schedule(version: int, url: str) -> dict:
    """A valid schedule command of 24 slots whose URLs are as long as the protocol's 8 KiB
    command limit allows: the largest command a receiver can get."""
    def build(length: int) -> dict:
        slots = [{"id": f"slot-{i:02}", "s": f"{i:02}:00:00", "e": f"{i:02}:59:59", "d": 127, "p": "priority",
                  "f": "2025-01-01", "t": "2099-12-31", "vol": 70,
                  "u": (url + "?pad=" + "x" * length)[:256]} for i in range(24)]
        return {"v": 1, "id": f"big-{version}", "op": "schedule", "pri": "normal", "ts": int(time.time()),
                "exp": int(time.time()) + 600, "ver": version, "tz": 420, "slots": slots}

    length = 0
    while len(json.dumps(build(length + 1)).encode()) <= COMMAND_MAX_BYTES and length < 256:
        length += 1
    command = build(length)
    decode_command(json.dumps(command).encode())  # valid, by the protocol's definition
    return command


def test_the_largest_command_is_carried_out_and_the_heap_holds_while_playing(broker: ProductionBroker, tmp_path: Path) -> None:
    rid = "fw-large"
    broker.accounts.add_receiver(rid, "pw-large")
    observer = observe(broker, rid)
    service = Service(broker, rid)
    device = Device(tmp_path / "flash", device_config(broker, rid, "pw-large", ntp=""))
    with StreamServer(64) as stream:
        try:
            device.start()
            play_status(observer)
            # The largest schedule the protocol allows (24 slots with long URLs: 8 KiB) arrives
            # over the broker, in one MQTT packet, and is carried out.
            command = largest_schedule(1, stream.url())
            assert len(json.dumps(command)) > COMMAND_MAX_BYTES - 64
            service.raw(json.dumps(command).encode())
            try:
                assert acks(observer, command["id"])[0]["st"] == "done"
            except AssertionError:
                raise AssertionError(device.output) from None
            heaps = []
            for round_ in range(3):
                # With it held, streams play and the broker restarts: the heap neither runs out
                # nor creeps.
                cid = f"play-{round_}"
                service.send("play", cid, url=stream.url(f"/live.mp3?r={round_}"))
                assert [a["st"] for a in acks(observer, cid, 2)] == ["accepted", "done"], device.output
                status = play_status(observer, lambda m, c=cid: m.get("ref") == c and m["st"] == "playing")
                assert status["sched"] == 1
                heaps.append(device.heap())
                broker.restart()
                try:
                    observer.wait("state", lambda m, s=round_ + 2: m["state"] == "online" and m["session"] == s,
                                  timeout=15)
                except AssertionError:
                    raise AssertionError(device.output) from None
            # A second schedule of that size arrives while the last stream plays.
            command = largest_schedule(2, stream.url())
            service.raw(json.dumps(command).encode())
            try:
                assert acks(observer, command["id"])[0]["st"] == "done"
            except AssertionError:
                raise AssertionError(device.output) from None
            replaced = device.heap()
            assert "no memory" not in device.output and "MemoryError" not in device.output, device.output
            assert device.stop() == 0
            assert_all_decode(observer, rid)
            assert heaps[-1]["used"] - heaps[0]["used"] < 2048, heaps
            assert min(h["free"] for h in [*heaps, replaced]) > 16 * 1024, (heaps, replaced)
        finally:
            device.close()
            service.close()
            observer.close()
