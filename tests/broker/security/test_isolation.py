"""Check 1: a receiver reads nothing of another's, whatever topic filter it asks for, and cannot
publish as another receiver or as the service."""

from __future__ import annotations

import time

from tests.broker.security.scenario import (
    FIRMWARE,
    FORGED,
    about,
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
from tests.support.mqtt_clients import Clients, MqttClient


def foreign_filters(a: str, b: str) -> list[str]:
    """Every filter through which A could hope to read B's topics (or anyone's)."""
    return [
        "#", "+/#", "+/+/#", "+/+/+/+/+", "loa/#", "loa/+/#", "loa/v1/#", "loa/v1/+/+/+", "loa/v1/rx/#",
        "loa/v1/rx/+", "loa/v1/rx/+/#", "loa/v1/rx/+/+", "loa/v1/rx/+/cmd", "loa/v1/rx/+/state",
        "loa/v1/rx/+/telemetry", "loa/v1/rx/+/event", "loa/v1/rx/+/ack", "loa/v1/rx/+/play",
        f"loa/v1/rx/{b}/#", f"loa/v1/rx/{b}/+", f"loa/v1/rx/{b}", f"loa/v1/rx/{b}/cmd", f"loa/v1/rx/{b}/state",
        f"loa/v1/rx/{b}/telemetry", f"loa/v1/rx/{b}/ack", f"loa/v1/rx/{b}/event", f"loa/v1/rx/{b}/play",
        f"+/v1/rx/{b}/#", f"loa/+/rx/{b}/cmd", f"loa/v1/+/{b}/#", f"loa/v1/rx/{a}/../{b}/#",
        "$SYS/#", "$CONTROL/#", "$CONTROL/dynamic-security/#", "$share/g/#", "$share/g/loa/v1/rx/#",
        f"$share/{a}/loa/v1/rx/{b}/#", "$share/g/loa/v1/rx/+/cmd",
    ]


def test_a_receiver_receives_nothing_of_another_on_any_filter(backend: ServiceBackend, clients: Clients,
                                                             monitor: MqttClient) -> None:
    b = online_receiver(backend, clients, "rx-b")
    # Retained messages of B exist before A subscribes: state (the birth), play, telemetry.
    b_mark = tag("b-own")
    assert b.client.publish(topic(b.rid, "play"), play(b.session, mark=b_mark), retain=True)
    assert b.client.publish(topic(b.rid, "telemetry"), telemetry(b.session, b.next_seq(), mark=b_mark), retain=True)
    first_command, got = deliver_command(backend, b)
    assert got is not None, "B did not receive its command (the check would prove nothing)"

    a = online_receiver(backend, clients, "rx-a")
    granted = {f: a.client.subscribe(f) for f in foreign_filters(a.rid, b.rid)}
    assert a.client.accepted, f"the broker dropped A for subscribing to a filter: {granted}"
    assert a.client.subscribe(f"loa/v1/rx/{a.rid}/cmd"), "A may subscribe to its own commands"

    # B's live traffic, retained and not, on every topic it has.
    assert b.client.publish(topic(b.rid, "state"), b.birth, retain=True)
    assert b.client.publish(topic(b.rid, "telemetry"), telemetry(b.session, b.next_seq(), mark=b_mark), qos=0)
    assert b.client.publish(topic(b.rid, "telemetry"), telemetry(b.session, b.next_seq(), mark=b_mark), retain=True)
    assert b.client.publish(topic(b.rid, "event"), event(b.session, b_mark))
    assert b.client.publish(topic(b.rid, "ack"), ack(b.session, first_command, "accepted", mark=b_mark))
    assert b.client.publish(topic(b.rid, "play"), play(b.session, mark=b_mark), retain=True)
    _, got = deliver_command(backend, b)
    assert got is not None, "B did not receive its second command"
    assert marker(b, monitor), "B's marker did not come back"

    # A still gets what is its own: its commands, sent after all of B's traffic.
    _, got = deliver_command(backend, a)
    assert got is not None, "A no longer receives its own commands"
    time.sleep(0.3)

    leaked = a.client.received(about(b.rid))
    assert not leaked, (f"A received {len(leaked)} of B's messages, e.g. {[(m.topic, m.retain) for m in leaked[:5]]}; "
                        f"SUBACKs were {granted}")
    foreign = a.client.received(lambda m: not m.topic.startswith(f"loa/v1/rx/{a.rid}/"))
    assert not foreign, f"A received messages outside its own topics: {[m.topic for m in foreign[:5]]}"
    # The witness saw B's traffic: it happened.
    assert monitor.received(carrying(b_mark)), "the monitor saw none of B's traffic"


def test_a_receiver_cannot_publish_as_another_or_as_the_service(backend: ServiceBackend, clients: Clients,
                                                               monitor: MqttClient) -> None:
    b = online_receiver(backend, clients, "rx-b")
    assert b.client.publish(topic(b.rid, "telemetry"), telemetry(b.session, b.next_seq(), rssi=-71), qos=0)
    assert backend.wait_live(b.rid, lambda r: r["signal_dbm"] == -71), "B's own telemetry never reached the API"
    pending, got = deliver_command(backend, b)
    assert got is not None
    a = online_receiver(backend, clients, "rx-a")

    mark = tag("forged-by-a")
    evil = tag("evil")
    forgeries = [
        (topic(b.rid, "state"), state("offline", b.session, "lost", mark=mark), True),
        (topic(b.rid, "state"), state("offline", b.session, "shutdown", mark=mark), False),
        (topic(b.rid, "telemetry"), telemetry(b.session, 999, rssi=-1, fw=FORGED, mark=mark), False),
        (topic(b.rid, "telemetry"), telemetry(b.session, 1000, rssi=-1, fw=FORGED, mark=mark), True),
        (topic(b.rid, "event"), event(b.session, mark), False),
        (topic(b.rid, "play"), play(b.session, mark=mark), True),
        (topic(b.rid, "ack"), ack(b.session, pending, "done", mark=mark), False),
        (topic(b.rid, "cmd"), command(tag("forged"), mark=mark), False),
        (topic(b.rid, "cmd"), command(tag("forged"), mark=mark), True),
        (topic(a.rid, "cmd"), command(tag("forged"), mark=mark), False),
        (f"loa/v1/rx/{b.rid}", state("offline", b.session, "lost", mark=mark), True),
        # The dynamic-security control topic: a receiver creating itself a login with the
        # service's role would own the fleet.
        ("$CONTROL/dynamic-security/v1", (
            '{"commands":[{"command":"createClient","username":"%s","password":"%s",'
            '"roles":[{"rolename":"loa-service"}],"textname":"%s"}]}' % (evil, evil, mark)).encode(), False),
    ]
    for forged_topic, payload, retain in forgeries:
        a.client.publish(forged_topic, payload, qos=1, retain=retain)
    assert marker(b, monitor), "B's marker did not come back"
    ack_reaches_api(backend, b)

    assert not b.client.received(carrying(mark)), \
        f"B received A's forgeries on {[m.topic for m in b.client.received(carrying(mark))]}"
    assert not a.client.received(carrying(mark)), "A received its own forged command"
    assert not monitor.received(carrying(mark)), \
        f"the service's subscription received A's forgeries on {[m.topic for m in monitor.received(carrying(mark))]}"
    live = backend.live(b.rid)
    assert live is not None and live["state"] == "online", f"the API shows B {live and live['state']} after A's forgeries"
    assert live["firmware"] == FIRMWARE and live["signal_dbm"] == -71, f"A's telemetry was taken as B's: {live}"
    assert backend.target_status(pending, b.rid) not in ("done", "accepted"), \
        "A's acknowledgement was recorded as B's"
    kept = retained(backend, clients, f"loa/v1/rx/{b.rid}/#", expect=topic(b.rid, "state"))
    assert not [m for m in kept if carrying(mark)(m)], f"A's forgeries were retained on {[m.topic for m in kept]}"
    states = [m.payload for m in kept if m.topic == topic(b.rid, "state")]
    assert states == [b.birth], f"B's retained state is not its birth: {states}"
    intruder = clients.connect(evil, evil, evil)
    assert not intruder.accepted, "A created a broker login through $CONTROL"
