"""The service's MQTT connection through broker outages: it keeps serving, retries with
backoff, reconnects, re-subscribes, and does not flip the fleet offline when it comes back."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import paho.mqtt.publish as publish
import pytest

from fleet_service.mqtt.adapter import BufferedReads
from fleet_service.runtime import Runtime
from fleet_service.worker.composition import run_mqtt_side
from tests.fleet_service.ingest.test_ingest import state, telemetry
from tests.support.fleet import provision_fleet
from tests.support.mosquitto import mosquitto
from tests.support.ports import free_port
from tests.support.service import service_settings
from tests.support.waiting import wait_until


def send(port: int, topic: str, payload: bytes, retain: bool = False) -> None:
    publish.single(topic, payload, qos=1, retain=retain, hostname="127.0.0.1", port=port)


async def test_broker_down_at_start_then_up_then_restarted(tmp_path, sqlite_url):
    port = free_port()
    settings = service_settings(sqlite_url, broker="external", mqtt_port=port, startup_grace_s=3,
                                inactivity_timeout_s=4)
    runtime = Runtime.from_settings(settings)
    provision_fleet(runtime.sessions, receivers=1)
    try:
        async with run_mqtt_side(runtime, wait_connected_s=1):
            adapter = runtime.mqtt
            assert not adapter.connected.is_set()  # no broker yet: the service runs anyway
            with mosquitto(tmp_path / "mq", port=port) as broker:
                await wait_until(adapter.connected.is_set, timeout=40, what="connection once the broker is up")
                await asyncio.to_thread(send, port, "loa/v1/rx/rx-0/state", state(1), True)
                await wait_until(lambda: runtime.ingest.tracker.is_online("rx-0"), what="birth")

                broker.stop()  # the broker goes away (persistence off: retained state is lost)
                await wait_until(lambda: not adapter.connected.is_set(), timeout=15, what="loss noticed")
                # Longer than the inactivity timeout, but the service heard nothing because it
                # could hear nothing: a broker outage must not flip the fleet offline.
                await asyncio.sleep(5)
            with mosquitto(tmp_path / "mq2", port=port):
                await wait_until(adapter.connected.is_set, timeout=40, what="reconnection")
                assert adapter.connections == 2
                # Re-subscribed: new messages arrive.
                await asyncio.to_thread(send, port, "loa/v1/rx/rx-0/telemetry", telemetry(1))
                await wait_until(lambda: "rx-0" in runtime.ingest.telemetry, what="telemetry after reconnect")
                assert runtime.ingest.tracker.is_online("rx-0") is True
                assert runtime.ingest.counters.transitions == 1  # the first birth, nothing else
    finally:
        runtime.close()


async def test_a_burst_larger_than_one_turn_of_the_loop_is_delivered_whole(tmp_path, sqlite_url):
    """Many messages arrive in one read of the socket (more than READ_BURST): what is buffered
    is handled on the next turns of the loop, with nothing more arriving to wake it."""
    port = free_port()
    # A long keepalive: the broker's PINGRESP would otherwise wake a stalled reader.
    settings = service_settings(sqlite_url, broker="external", mqtt_port=port, mqtt_keepalive_s=60)
    runtime = Runtime.from_settings(settings)
    provision_fleet(runtime.sessions, receivers=4)
    reports = 400  # about 45 KB: one read of the socket takes them all
    try:
        with mosquitto(tmp_path / "mq", port=port):
            async with run_mqtt_side(runtime, wait_connected_s=10):
                births = [{"topic": f"loa/v1/rx/rx-{n}/state", "payload": state(1), "qos": 1} for n in range(4)]
                burst = [{"topic": f"loa/v1/rx/rx-{seq % 4}/telemetry", "payload": telemetry(1, seq // 4), "qos": 0}
                         for seq in range(reports)]
                await asyncio.to_thread(publish.multiple, births, hostname="127.0.0.1", port=port)
                ingest = runtime.ingest
                await wait_until(lambda: ingest.counters.accepted == 4, what="the births")
                # The loop is held while the burst is written, so that it all waits in the
                # service's socket and nothing arrives after it to wake the loop again.
                writer = threading.Thread(target=publish.multiple, args=(burst,),
                                          kwargs={"hostname": "127.0.0.1", "port": port})
                writer.start()
                writer.join(10)
                time.sleep(0.5)  # noqa: ASYNC251 (holding the loop is the point)
                await wait_until(lambda: ingest.counters.accepted == 4 + reports, timeout=10,
                                 what=f"all {4 + reports} messages")
                assert {rid: t.seq for rid, t in ingest.telemetry.items()} == {
                    f"rx-{n}": reports // 4 - 1 for n in range(4)}
                assert not ingest.counters.dropped
    finally:
        runtime.close()


def test_buffered_reads_take_what_the_kernel_holds_in_one_read():
    left, right = socket.socketpair()
    try:
        left.setblocking(False)
        reads = BufferedReads(left)
        right.sendall(bytes(range(256)) * 40)  # 10 KiB
        assert reads.recv(1) == b"\x00"
        # The rest is in the buffer, none left in the kernel: the loop's poll would not see it.
        with pytest.raises(BlockingIOError):
            left.recv(1, socket.MSG_PEEK)
        assert reads.pending() == 10 * 1024 - 1
        assert reads.recv(3) == b"\x01\x02\x03"
        assert len(reads.recv(100_000)) == 10 * 1024 - 4  # a short read, as from a socket
        assert reads.pending() == 0
        with pytest.raises(BlockingIOError):
            reads.recv(1)
        right.close()
        assert reads.recv(1) == b""  # the peer closed
    finally:
        left.close()
        right.close()
