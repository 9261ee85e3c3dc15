"""Check 3 (and 7): a receiver's Last Will is only ever its own state. A Will on any other topic
is either refused at CONNECT or dropped; nothing of it is delivered, retained or ingested."""

from __future__ import annotations

import time

from tests.broker.security.scenario import (
    FIRMWARE,
    FORGED,
    Rx,
    ack,
    ack_reaches_api,
    carrying,
    command,
    deliver_command,
    event,
    marker,
    online_receiver,
    play,
    retained,
    state,
    tag,
    telemetry,
    topic,
)
from tests.support.broker_backends import ServiceBackend
from tests.support.mqtt_clients import Clients, MqttClient, RawConnection, Will


def foreign_wills(a: Rx, b: Rx, pending: str, mark: str, evil: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of every Will A has no business leaving."""
    return [
        (topic(b.rid, "state"), state("offline", b.session, "lost", mark=mark)),
        (topic(b.rid, "cmd"), command(tag("forged"), mark=mark)),
        (topic(b.rid, "ack"), ack(b.session, pending, "done", mark=mark)),
        (topic(b.rid, "telemetry"), telemetry(b.session, 999, rssi=-1, fw=FORGED, mark=mark)),
        (topic(b.rid, "event"), event(b.session, mark)),
        (topic(b.rid, "play"), play(b.session, mark=mark)),
        (topic(a.rid, "cmd"), command(tag("forged"), mark=mark)),       # the service's topic for A
        ("loa/v1/rx/+/cmd", command(tag("forged"), mark=mark)),         # wildcards, literally
        ("loa/v1/rx/+/state", state("offline", b.session, "lost", mark=mark)),
        ("loa/v1/rx/#", command(tag("forged"), mark=mark)),
        (f"loa/v1/rx/{b.rid}", state("offline", b.session, "lost", mark=mark)),
        ("$SYS/broker/forged", mark.encode()),
        ("$CONTROL/dynamic-security/v1", (
            '{"commands":[{"command":"createClient","username":"%s","password":"%s",'
            '"roles":[{"rolename":"loa-service"}],"textname":"%s"}]}' % (evil, evil, mark)).encode()),
    ]


def test_a_will_on_a_foreign_topic_is_never_delivered_nor_retained(backend: ServiceBackend, clients: Clients,
                                                                   monitor: MqttClient) -> None:
    b = online_receiver(backend, clients, "rx-b")
    assert b.client.publish(topic(b.rid, "telemetry"), telemetry(b.session, b.next_seq(), rssi=-72), qos=0)
    assert backend.wait_live(b.rid, lambda r: r["signal_dbm"] == -72)
    pending, got = deliver_command(backend, b)
    assert got is not None
    a_rid, a_password = backend.receiver("rx-a")
    a = online_receiver(backend, clients, credentials=(a_rid, a_password))
    a.client.close()

    mark, evil = tag("foreign-will"), tag("evil")
    refused_at_connect = []
    for will_topic, payload in foreign_wills(a, b, pending, mark, evil):
        for retain in (False, True):
            link = RawConnection(backend.mqtt_host, backend.mqtt_port, a.rid, a.rid, a.password,
                                 will=Will(will_topic, payload, qos=1, retain=retain))
            if not link.accepted:
                refused_at_connect.append((will_topic, retain, link.connack))
            link.kill()
            time.sleep(0.05)

    # A positive control: the same login, a Will on its own state, the same abrupt end. It is
    # published, so the foreign Wills above had every chance to be.
    own_mark = tag("own-will")
    control = RawConnection(backend.mqtt_host, backend.mqtt_port, a.rid, a.rid, a.password,
                            will=Will(topic(a.rid, "state"), state("offline", a.session, "lost", mark=own_mark)))
    assert control.accepted, f"A's login with a Will on its own state was refused ({control.connack})"
    control.kill()
    assert monitor.wait_for(carrying(own_mark)) is not None, "A's Will on its own state was not published"
    assert marker(b, monitor), "B's marker did not come back"

    delivered = monitor.received(carrying(mark)) + b.client.received(carrying(mark))
    assert not delivered, f"foreign Wills were delivered on {sorted({m.topic for m in delivered})} " \
                          f"(refused at CONNECT: {[t for t, _, _ in refused_at_connect]})"
    live = backend.live(b.rid)
    assert live is not None and live["state"] == "online", f"a forged Will made the API show B {live and live['state']}"
    assert live["firmware"] == FIRMWARE and live["signal_dbm"] == -72, f"a forged Will was taken as B's telemetry: {live}"
    ack_reaches_api(backend, b)
    assert backend.target_status(pending, b.rid) not in ("done", "accepted"), \
        "a forged Will was recorded as B's acknowledgement"

    # Nothing retained: B logs in afresh and reads what is kept under its topics; a subscriber
    # with the service's rights reads what is kept anywhere.
    b.client.close()
    fresh = clients.connect(b.rid, b.rid, b.password)
    assert fresh.accepted
    assert fresh.subscribe(f"loa/v1/rx/{b.rid}/#")
    fresh.wait_for(lambda m: m.topic == topic(b.rid, "state") and m.retain)
    time.sleep(0.5)
    kept = fresh.received(lambda m: m.retain)
    assert [m.payload for m in kept if m.topic == topic(b.rid, "state")] == [b.birth], \
        f"B's retained state is not its birth: {[(m.topic, m.payload) for m in kept]}"
    assert not [m for m in kept if carrying(mark)(m)], "a foreign Will was retained under B's topics"
    everywhere = retained(backend, clients, "loa/v1/rx/#", expect=topic(b.rid, "state"))
    assert not [m.topic for m in everywhere if carrying(mark)(m)], \
        f"foreign Wills were retained on {[m.topic for m in everywhere if carrying(mark)(m)]}"
    intruder = clients.connect(evil, evil, evil)
    assert not intruder.accepted, "a Will on $CONTROL created a broker login"
