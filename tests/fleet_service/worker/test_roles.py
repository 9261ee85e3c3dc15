"""``loa serve --role api`` and ``--role worker`` as separate processes on one PostgreSQL and one
Mosquitto: one worker leads, the other stands by and takes over within seconds when the leader
is killed; an API process records changes that the leading worker applies before it answers; a
leader killed mid-delivery loses nothing, and only what was in flight is delivered again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.migrations import upgrade
from fleet_service.protocol import decode_command
from fleet_service.protocol.messages import Ack, AckStatus
from fleet_service.worker.service import LEASE_TTL, STANDBY_POLL_S, current_leader
from tests.support.loa_process import REPO_ROOT, loa_command
from tests.support.mosquitto_production import production_mosquitto
from tests.support.ports import free_port, wait_for_port
from tests.support.postgres import scratch_database

pytestmark = pytest.mark.postgres


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


def connected(host: str, port: int, rid: str, password: str) -> mqtt.Client | None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=rid)
    client.username_pw_set(rid, password)
    try:
        client.connect(host, port, keepalive=30)
    except OSError:
        return None
    client.loop_start()
    deadline = time.monotonic() + 5
    while not client.is_connected() and time.monotonic() < deadline:
        time.sleep(0.05)
    if client.is_connected():
        return client
    client.loop_stop()
    return None


class Cluster:
    """Service processes on one scratch PostgreSQL and one production-like Mosquitto."""

    def __init__(self, tmp_path: Path, database_url: str, broker, running: list[subprocess.Popen[bytes]]) -> None:  # type: ignore[no-untyped-def]
        self.tmp_path, self.broker, self.running = tmp_path, broker, running
        self.engine = make_engine(database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
        self.env.update({
            "PYTHONPATH": str(REPO_ROOT), "LOA_ENVIRONMENT": "test", "LOA_DATABASE_URL": database_url,
            "LOA_BROKER": "mosquitto", "LOA_MQTT_HOST": broker.host, "LOA_MQTT_PORT": str(broker.port),
            "LOA_MQTT_USERNAME": broker.service_username, "LOA_MQTT_PASSWORD": broker.service_password,
            "LOA_MOSQUITTO_ADMIN_USERNAME": broker.admin_username,
            "LOA_MOSQUITTO_ADMIN_PASSWORD": broker.admin_password,
        })
        self.apis: list[httpx.Client] = []

    def leader(self) -> str | None:
        with session_scope(self.sessions) as session:
            return current_leader(session)

    def cli(self, *args: str) -> str:
        return subprocess.run([*loa_command(), *args], env=self.env, cwd=self.tmp_path, capture_output=True,
                              text=True, check=True, timeout=60).stdout

    def serve(self, role: str, name: str, port: int | None = None) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{name}.log").open("wb")
        extra = {"LOA_API_PORT": str(port)} if port else {}
        process = subprocess.Popen([*loa_command(), "serve", "--role", role], env={**self.env, **extra},
                                   cwd=self.tmp_path, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.running.append(process)
        return process

    def start_apis(self, count: int) -> list[httpx.Client]:
        self.cli("users", "create", "admin", "--role", "admin", "--token-only")
        token = [line.strip() for line in self.cli("tokens", "create", "admin").splitlines()
                 if re.fullmatch(r"[A-Za-z0-9_-]{32,}", line.strip())][0]
        ports = [free_port() for _ in range(count)]
        for i, port in enumerate(ports):
            self.serve("api", f"api-{i}", port)
        for port in ports:
            wait_for_port(port, timeout=60)
        self.apis = [httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30,
                                  headers={"Authorization": f"Bearer {token}"}) for port in ports]
        return self.apis

    def close(self) -> None:
        for api in self.apis:
            api.close()
        self.engine.dispose()


@contextmanager
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with scratch_database() as database_url, production_mosquitto(tmp_path / "mq") as broker, processes() as running:
        upgrade(database_url)
        made = Cluster(tmp_path, database_url, broker, running)
        try:
            yield made
        finally:
            made.close()


def test_workers_take_over_and_apis_follow_the_leader(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        broker = c.broker
        first = c.serve("worker", "worker-a")
        first_id = until(c.leader, 60, "the first worker to lead")
        second = c.serve("worker", "worker-b")
        time.sleep(3)  # it has started and asked for the lease a few times by now
        assert second.poll() is None and c.leader() == first_id
        apis = c.start_apis(2)

        # Through the first API: registered and provisioned; the leader puts the login on Mosquitto
        # before the API answers, so the receiver logs in at once.
        region = apis[0].post("/regions", json={"name": "Hùng Sơn", "level": "thị trấn"}).json()
        station = apis[0].post("/stations", json={"region_id": region["id"], "name": "Đài Hùng Sơn"}).json()
        assert apis[0].post("/receivers", json={"id": "rx-1", "hardware_id": "hw-1",
                                                "station_id": station["id"]}).status_code == 201
        provisioned = apis[0].post("/receivers/rx-1/provision")
        assert provisioned.status_code == 201 and provisioned.json()["broker_applied"] is True
        receiver = connected(broker.host, broker.port, "rx-1", provisioned.json()["mqtt_password"])
        assert receiver is not None
        birth = b'{"v":1,"state":"online","session":1,"reason":"boot"}'
        receiver.publish("loa/v1/rx/rx-1/state", birth, qos=1, retain=True).wait_for_publish(5)

        # The leader dies without a word; the other worker takes over within the lease's time.
        killed_at = time.monotonic()
        first.kill()
        first.wait()
        second_id = until(lambda: (holder := c.leader()) not in (None, first_id) and holder, 30, "the takeover")
        takeover_s = time.monotonic() - killed_at
        assert takeover_s < LEASE_TTL.total_seconds() + STANDBY_POLL_S + 3, takeover_s
        assert second_id != first_id

        # A command recorded by an API process is delivered by the new leader, once.
        received: list[bytes] = []
        receiver.on_message = lambda _client, _userdata, message: received.append(message.payload)
        receiver.subscribe("loa/v1/rx/rx-1/cmd", qos=1)
        time.sleep(0.5)
        sent = apis[0].post("/commands", json={"target": {"receiver": "rx-1"}, "op": "volume", "volume": 40})
        assert sent.status_code == 202, sent.text
        until(lambda: received, 5, "the command at the receiver")
        time.sleep(2)
        assert len(received) == 1 and sent.json()["id"].encode() in received[0]

        # Through the second API: revoked; the new leader applies it before the answer.
        revoked = apis[1].post("/receivers/rx-1/revoke")
        assert revoked.status_code == 200, revoked.text
        until(lambda: not receiver.is_connected(), 5, "the revoked receiver's session to drop")
        assert connected(broker.host, broker.port, "rx-1", provisioned.json()["mqtt_password"]) is None
        receiver.loop_stop()
        log = (c.tmp_path / "worker-b.log").read_text(errors="replace")
        assert "stands by" in log and "leads" in log


class CountingReceiver:
    """A receiver as the protocol asks (docs/protocol.md, "Never twice"): it carries out each
    command id once, answers a repeated delivery with ``dup``, and counts every delivery. The
    ``slow`` ones answer a while after they were sent a command: still in flight when the
    leader is killed."""

    def __init__(self, receiver_id: str, client: mqtt.Client, *, answer_after_s: float) -> None:
        self.receiver_id, self.client, self.answer_after_s = receiver_id, client, answer_after_s
        self.deliveries: Counter[str] = Counter()
        self.executed: Counter[str] = Counter()
        self.answered: set[str] = set()
        self._lock = threading.Lock()
        client.on_message = self._on_message

    def _on_message(self, _client, _userdata, message) -> None:  # type: ignore[no-untyped-def]
        command = decode_command(message.payload)
        with self._lock:
            self.deliveries[command.command_id] += 1
            repeated = self.executed[command.command_id] > 0
            if not repeated:
                self.executed[command.command_id] += 1
        delay = 0.0 if repeated else self.answer_after_s
        threading.Timer(delay, self._answer, (command.command_id, repeated)).start()

    def _answer(self, command_id: str, repeated: bool) -> None:
        ack = Ack(session=1, command_id=command_id, status=AckStatus.DONE, sent_at=int(time.time()), duplicate=repeated)
        self.client.publish(f"loa/v1/rx/{self.receiver_id}/ack", ack.model_dump_json(by_alias=True), qos=1)
        with self._lock:
            self.answered.add(command_id)


def test_killing_the_leader_mid_delivery_loses_nothing_and_repeats_only_what_was_in_flight(tmp_path: Path) -> None:
    receivers_count = 24
    with cluster(tmp_path) as c:
        broker = c.broker
        first = c.serve("worker", "worker-a")
        first_id = until(c.leader, 60, "the first worker to lead")
        c.serve("worker", "worker-b")
        apis = c.start_apis(2)
        region = apis[0].post("/regions", json={"name": "Phú Lạc", "level": "xã"}).json()
        station = apis[1].post("/stations", json={"region_id": region["id"], "name": "Đài Phú Lạc"}).json()
        receivers: list[CountingReceiver] = []
        for i in range(receivers_count):
            rid = f"rx-{i:02d}"
            api = apis[i % 2]
            assert api.post("/receivers", json={"id": rid, "hardware_id": f"hw-{i}",
                                                "station_id": station["id"]}).status_code == 201
            password = api.post(f"/receivers/{rid}/provision").json()["mqtt_password"]
            client = connected(broker.host, broker.port, rid, password)
            assert client is not None, rid
            # Half answer at once, half 8 s after a command reached them.
            receivers.append(CountingReceiver(rid, client, answer_after_s=0.0 if i % 2 == 0 else 8.0))
            client.subscribe(f"loa/v1/rx/{rid}/cmd", qos=1)
            birth = b'{"v":1,"state":"online","session":1,"reason":"boot"}'
            client.publish(f"loa/v1/rx/{rid}/state", birth, qos=1, retain=True).wait_for_publish(5)

        # The live state, read through either API process, agrees: everyone online.
        def live(api: httpx.Client) -> dict[str, str]:
            return {r["receiver_id"]: r["state"] for r in api.get("/live/receivers").json()["receivers"]}

        until(lambda: all(state == "online" for state in live(apis[0]).values()) and len(live(apis[0])) ==
              receivers_count, 15, "every receiver online in the live state")
        assert live(apis[0]) == live(apis[1])

        def done(command_id: str) -> int:
            return apis[1].get(f"/commands/{command_id}").json()["progress"].get("done", 0)

        # A command through either API: published once per target.
        quick = apis[1].post("/commands", json={"target": {"station": station["id"]}, "op": "volume", "volume": 30})
        assert quick.status_code == 202, quick.text
        until(lambda: all(quick.json()["id"] in r.answered for r in receivers), 20, "every answer")
        until(lambda: done(quick.json()["id"]) == receivers_count, 10, "the first command's outcomes")

        # Another, then the leader is killed while the slow half has not answered it yet.
        sent = apis[0].post("/commands", json={"target": {"station": station["id"]}, "op": "volume", "volume": 60})
        assert sent.status_code == 202, sent.text
        cid = sent.json()["id"]
        until(lambda: all(cid in r.deliveries for r in receivers), 15, "the command at every receiver")

        assert done(quick.json()["id"]) == receivers_count
        # The quick half's answers are recorded before the kill: they are not in flight.
        until(lambda: done(cid) >= receivers_count // 2, 15, "the quick half recorded")
        in_flight = {r.receiver_id for r in receivers if cid not in r.answered}
        assert len(in_flight) == receivers_count // 2
        first.kill()
        first.wait()
        until(lambda: (holder := c.leader()) not in (None, first_id) and holder, 30, "the takeover")

        # Nothing lost: every target ends done, through either API.
        until(lambda: done(cid) == receivers_count, 40, "every outcome recorded by the new leader")
        assert all(r.executed[cid] == 1 and r.executed[quick.json()["id"]] == 1 for r in receivers)
        assert all(r.deliveries[quick.json()["id"]] == 1 for r in receivers)
        # Delivered again only where the command was in flight at the kill.
        repeated = {r.receiver_id: r.deliveries[cid] - 1 for r in receivers if r.deliveries[cid] > 1}
        print(f"re-published after the kill: {sum(repeated.values())}, to {len(repeated)} of the "
              f"{len(in_flight)} receivers the command was in flight to")
        assert set(repeated) <= in_flight, repeated
        assert all(count <= 2 for count in repeated.values()), repeated
        until(lambda: live(apis[0]) == live(apis[1]), 10, "both APIs to agree")
        for r in receivers:
            r.client.loop_stop()
            r.client.disconnect()


def test_separate_roles_need_postgresql(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "LOA_DATABASE_URL": f"sqlite:///{tmp_path / 'loa.db'}"})
    for role in ("api", "worker"):
        result = subprocess.run([*loa_command(), "serve", "--role", role], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and "PostgreSQL" in result.stderr
    assert not (tmp_path / "loa.db").exists()
