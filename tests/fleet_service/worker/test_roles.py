"""``loa serve --role api`` and ``--role worker`` as separate processes on one PostgreSQL and one
Mosquitto: one worker leads, the other stands by and takes over within seconds when the leader
is killed; an API process records changes that the leading worker applies before it answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.migrations import upgrade
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


def test_workers_take_over_and_apis_follow_the_leader(tmp_path: Path) -> None:
    with scratch_database() as database_url, production_mosquitto(tmp_path / "mq") as broker, processes() as running:
        upgrade(database_url)
        engine = make_engine(database_url)
        sessions = make_sessionmaker(engine)

        def leader() -> str | None:
            with session_scope(sessions) as session:
                return current_leader(session)

        env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
        env.update({
            "PYTHONPATH": str(REPO_ROOT), "LOA_ENVIRONMENT": "test", "LOA_DATABASE_URL": database_url,
            "LOA_BROKER": "mosquitto", "LOA_MQTT_HOST": broker.host, "LOA_MQTT_PORT": str(broker.port),
            "LOA_MQTT_USERNAME": broker.service_username, "LOA_MQTT_PASSWORD": broker.service_password,
            "LOA_MOSQUITTO_ADMIN_USERNAME": broker.admin_username,
            "LOA_MOSQUITTO_ADMIN_PASSWORD": broker.admin_password,
        })

        def cli(*args: str) -> str:
            return subprocess.run([*loa_command(), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                                  check=True, timeout=60).stdout

        def serve(role: str, name: str, port: int | None = None) -> subprocess.Popen[bytes]:
            log = (tmp_path / f"{name}.log").open("wb")
            extra = {"LOA_API_PORT": str(port)} if port else {}
            process = subprocess.Popen([*loa_command(), "serve", "--role", role], env={**env, **extra}, cwd=tmp_path,
                                       stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            running.append(process)
            return process

        cli("users", "create", "admin", "--role", "admin", "--token-only")
        token = [line.strip() for line in cli("tokens", "create", "admin").splitlines()
                 if re.fullmatch(r"[A-Za-z0-9_-]{32,}", line.strip())][0]

        first = serve("worker", "worker-a")
        first_id = until(leader, 60, "the first worker to lead")
        second = serve("worker", "worker-b")
        time.sleep(3)  # it has started and asked for the lease a few times by now
        assert second.poll() is None and leader() == first_id
        api_ports = [free_port(), free_port()]
        for i, port in enumerate(api_ports):
            serve("api", f"api-{i}", port)
        for port in api_ports:
            wait_for_port(port, timeout=60)
        apis = [httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=30,
                             headers={"Authorization": f"Bearer {token}"}) for port in api_ports]

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
        second_id = until(lambda: (holder := leader()) not in (None, first_id) and holder, 30, "the takeover")
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
        for api in apis:
            api.close()
        engine.dispose()
        log = (tmp_path / "worker-b.log").read_text(errors="replace")
        assert "stands by" in log and "leads" in log


def test_separate_roles_need_postgresql(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "LOA_DATABASE_URL": f"sqlite:///{tmp_path / 'loa.db'}"})
    for role in ("api", "worker"):
        result = subprocess.run([*loa_command(), "serve", "--role", role], env=env, cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and "PostgreSQL" in result.stderr
    assert not (tmp_path / "loa.db").exists()
