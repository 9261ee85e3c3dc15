"""Check 5: a packet far beyond anything Loa sends (16 MB, or just above 64 KiB) from a valid
receiver on its own telemetry topic is refused by the broker (connection closed, or the message
dropped): the service never receives it, and the broker goes on serving everyone else. A
report of a few kB still goes through."""

from __future__ import annotations

import pytest

from tests.broker.security.scenario import carrying, deliver_command, online_receiver, tag, telemetry, topic
from tests.support.broker_backends import ServiceBackend
from tests.support.mqtt_clients import Clients, MqttClient, publish_oversize

LIMIT = 64 * 1024


@pytest.mark.parametrize("size", [16 * 1024 * 1024, LIMIT + 1], ids=["16MB", "64KiB+1"])
def test_an_oversized_publish_never_reaches_the_service(backend: ServiceBackend, clients: Clients,
                                                        monitor: MqttClient, size: int) -> None:
    other = online_receiver(backend, clients, "rx-other")
    rid, password = backend.receiver("rx-big")
    before = backend.ingest_status()["counters"]

    outcome = publish_oversize(backend.mqtt_host, backend.mqtt_port, rid, rid, password, topic(rid, "telemetry"),
                               size)
    assert outcome.connack == 0, f"the receiver could not log in ({outcome.connack})"

    # The broker still serves: another receiver gets a command, and the same receiver's report
    # of a few kB (under the service's 4 kB limit) reaches the service.
    _, got = deliver_command(backend, other)
    assert got is not None, "after the oversized publish another receiver no longer gets its commands"
    normal = clients.connect(rid, rid, password)
    assert normal.accepted, f"the receiver cannot log in again after its oversized publish ({normal.connack})"
    mark = tag("few-kb")
    report = telemetry(1, 1, rssi=-77, mark=mark, pad=3000)
    assert 3000 < len(report) < 4096
    assert normal.publish(topic(rid, "telemetry"), report, qos=1)
    assert backend.wait_live(rid, lambda r: r["signal_dbm"] == -77), "a report of a few kB was not ingested"
    assert monitor.wait_for(carrying(mark)) is not None, "a report of a few kB was not delivered"

    after = backend.ingest_status()["counters"]
    big = monitor.received(lambda m: len(m.payload) > LIMIT)
    assert not big, f"a subscriber with the service's rights received {len(big[0].payload)} bytes on {big[0].topic} " \
                    f"(broker closed the connection: {outcome.closed_by_broker})"
    oversized = after["dropped"].get("oversized", 0) - before["dropped"].get("oversized", 0)
    assert oversized == 0, f"the service received the {size}-byte packet (its ingest dropped it as oversized)"
