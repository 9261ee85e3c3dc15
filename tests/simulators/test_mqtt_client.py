"""The simulator's own MQTT 3.1.1 client and its cuttable link, against real Mosquitto brokers."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from simulators.link import Link, LinkDown
from simulators.mqtt import (
    ConnectionLost,
    MqttClient,
    NotAuthorized,
    PingTimeout,
    SubscribeRefused,
    Will,
)
from tests.simulators.helpers import credentials
from tests.support.mosquitto import mosquitto
from tests.support.ports import free_port

DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lost: list[BaseException] = []

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.messages.append((topic, payload, retained))

    def mqtt_lost(self, reason: BaseException) -> None:
        self.lost.append(reason)


async def _client(host: str, port: int, rid: str, password: str, *, link: Link | None = None, **kwargs) -> MqttClient:
    conn = await (link or Link()).open(host, port, timeout=2)
    client = MqttClient(conn, client_id=rid, username=rid, password=password, **kwargs)
    await client.connect(timeout=2)
    return client


async def test_wrong_password_raises_not_authorized(make_broker) -> None:
    broker = make_broker(credentials(1))
    conn = await Link().open(broker.host, broker.port, timeout=2)
    client = MqttClient(conn, client_id="rx-000", username="rx-000", password="wrong", keepalive=5)
    with pytest.raises(NotAuthorized, match=r"CONNACK 5: not authorized"):
        await client.connect(timeout=2)
    assert isinstance(client.closed.result(), NotAuthorized)


async def test_publish_subscribe_keepalive_and_disconnect(make_broker, make_observer) -> None:
    broker = make_broker(credentials(1))
    observer = make_observer(broker)
    inbox = Inbox()
    client = await _client(broker.host, broker.port, "rx-000", "secret-000", keepalive=1, handler=inbox)
    assert await client.subscribe([("loa/v1/rx/rx-000/cmd", 1), ("loa/v1/rx/rx-000/x", 0)]) == (1, 0)
    await client.publish("loa/v1/rx/rx-000/a", b"qos1", qos=1, timeout=2)
    client.publish_nowait("loa/v1/rx/rx-000/b", b"qos0")
    observer.publish("loa/v1/rx/rx-000/cmd", b"hello", qos=1)
    # Idle for two keepalives: the client pings and hears back.
    loop = asyncio.get_running_loop()
    await asyncio.sleep(2.2)
    assert client.connected and not inbox.lost
    assert loop.time() - client.last_received < 1.2
    assert ("loa/v1/rx/rx-000/cmd", b"hello", False) in inbox.messages
    payloads = {m.topic: m.payload for m in observer.messages("rx-000")}
    assert payloads["loa/v1/rx/rx-000/a"] == b"qos1" and payloads["loa/v1/rx/rx-000/b"] == b"qos0"
    client.disconnect()
    await asyncio.sleep(0.2)
    assert "Client rx-000 disconnected." in broker.log
    assert "exceeded timeout" not in broker.log


async def test_cut_link_holds_bytes_and_delivers_them_after_a_short_cut(make_broker, make_observer) -> None:
    broker = make_broker(credentials(1))
    observer = make_observer(broker)
    link = Link()
    client = await _client(broker.host, broker.port, "rx-000", "secret-000", link=link, keepalive=5)
    link.cut()
    cut_at = time.time()
    ack = client.publish_nowait("loa/v1/rx/rx-000/held", b"1", qos=1)
    assert ack is not None
    await asyncio.sleep(0.5)
    assert not ack.done() and not observer.messages("rx-000")  # nothing passed
    link.restore()
    await asyncio.wait_for(ack, 2)
    await asyncio.sleep(0.1)
    (message,) = observer.messages("rx-000")
    assert message.t >= cut_at + 0.5 and message.payload == b"1"
    assert client.connected


async def test_dead_link_is_detected_by_ping_timeout_and_connect_waits_for_the_link(make_broker) -> None:
    broker = make_broker(credentials(1))
    link = Link()
    inbox = Inbox()
    client = await _client(
        broker.host, broker.port, "rx-000", "secret-000", link=link, keepalive=1, response_timeout=0.5, handler=inbox,
        will=Will("loa/v1/rx/rx-000/state", b"{}", qos=1, retain=False),
    )
    link.cut()
    cut_at = time.monotonic()
    reason = await asyncio.wait_for(client.closed, 5)
    assert isinstance(reason, PingTimeout)
    assert time.monotonic() - cut_at <= 1 + 0.5 + 0.3  # a keepalive, then the response timeout
    assert inbox.lost == [reason]
    assert link.connections == 1  # abandoned: still open, silent, no FIN through a dead link

    started = time.monotonic()
    with pytest.raises(LinkDown):
        await link.open(broker.host, broker.port, timeout=0.4)
    assert 0.35 <= time.monotonic() - started <= 1.0

    # A connect attempt made while cut goes through once the link is back in time.
    attempt = asyncio.ensure_future(link.open(broker.host, broker.port, timeout=3))
    await asyncio.sleep(0.3)
    assert not attempt.done()
    link.restore()
    conn = await asyncio.wait_for(attempt, 2)
    assert conn.is_open
    await asyncio.sleep(0.1)
    assert link.connections == 1  # the abandoned connection was reset at the restore
    conn.close()


async def test_connection_closed_by_the_broker_is_reported(make_broker) -> None:
    broker = make_broker(credentials(1))
    inbox = Inbox()
    client = await _client(broker.host, broker.port, "rx-000", "secret-000", keepalive=5, handler=inbox)
    # The same client id connecting again takes the session over: the broker closes the first.
    second = await _client(broker.host, broker.port, "rx-000", "secret-000", keepalive=5)
    reason = await asyncio.wait_for(client.closed, 3)
    assert isinstance(reason, ConnectionLost)
    assert inbox.lost == [reason]
    assert second.connected
    second.disconnect()


@pytest.mark.skipif(not DYNSEC.exists(), reason="Mosquitto dynamic security plugin not installed")
async def test_subscription_refused_by_the_broker_raises(tmp_path: Path) -> None:
    # The dynamic security plugin denies subscriptions by default: SUBACK 0x80.
    config = tmp_path / "dynsec.json"
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(config), "admin", "admin-pw"], check=True, capture_output=True)
    body = f"plugin {DYNSEC}\nplugin_opt_config_file {config}\n"
    with mosquitto(tmp_path / "broker", body, port=free_port()) as server:
        subprocess.run(
            ["mosquitto_ctrl", "-h", server.host, "-p", str(server.port), "-u", "admin", "-P", "admin-pw",
             "dynsec", "createClient", "rx-000", "-p", "secret"],
            check=True, capture_output=True,
        )
        client = await _client(server.host, server.port, "rx-000", "secret", keepalive=5)
        with pytest.raises(SubscribeRefused) as refused:
            await client.subscribe([("loa/v1/rx/rx-000/cmd", 1)])
        assert refused.value.refused == ("loa/v1/rx/rx-000/cmd",)
        assert client.connected  # a refused subscription does not end the connection
        client.disconnect()


async def test_qos1_publishes_beyond_the_in_flight_limit_wait_their_turn(make_broker, make_observer) -> None:
    from simulators.mqtt import MAX_INFLIGHT

    broker = make_broker(credentials(1))
    observer = make_observer(broker)
    client = await _client(broker.host, broker.port, "rx-000", "secret-000", keepalive=5)
    count = 3 * MAX_INFLIGHT
    futures = [client.publish_nowait("loa/v1/rx/rx-000/burst", b"%d" % i, qos=1) for i in range(count)]
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    await asyncio.sleep(0.2)
    assert [m.payload for m in observer.messages("rx-000", "burst")] == [b"%d" % i for i in range(count)]
    client.disconnect()
