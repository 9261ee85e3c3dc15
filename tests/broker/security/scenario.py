"""The pieces every check is built from: receivers that are online as the protocol says
(Will, birth, subscription to their own topics), payloads as receivers send them, and the
witnesses that tell whether something was delivered."""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass

from tests.support.broker_backends import MONITOR_PREFIX, ServiceBackend
from tests.support.mqtt_clients import WAIT_S, Clients, MqttClient, Received, Will

FIRMWARE = "sec-1.0"
FORGED = "FORGED"


def topic(rid: str, kind: str) -> str:
    return f"loa/v1/rx/{rid}/{kind}"


def tag(what: str) -> str:
    """A unique marker put into a payload, to recognise it wherever it turns up."""
    return f"{what}-{uuid.uuid4().hex[:8]}"


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def state(value: str, session: int, reason: str, *, fw: str | None = None, mark: str | None = None) -> bytes:
    body: dict[str, object] = {"v": 1, "state": value, "session": session, "reason": reason}
    if fw is not None:
        body["fw"] = fw
    if mark is not None:
        body["mark"] = mark  # unknown fields are ignored by the service
    return _json(body)


def telemetry(session: int, seq: int, *, rssi: int = -70, fw: str = FIRMWARE, mark: str | None = None,
              pad: int = 0) -> bytes:
    body: dict[str, object] = {"v": 1, "session": session, "seq": seq, "ts": int(time.time()), "up": 100 + seq,
                               "rssi": rssi, "amp": "on", "st": "idle", "fw": fw}
    if mark is not None:
        body["mark"] = mark
    if pad:
        body["pad"] = "x" * pad
    return _json(body)


def event(session: int, detail: str) -> bytes:
    return _json({"v": 1, "session": session, "ts": int(time.time()), "kind": "boot", "detail": detail})


def ack(session: int, command_id: str, status: str = "done", *, mark: str | None = None) -> bytes:
    body: dict[str, object] = {"v": 1, "session": session, "id": command_id, "st": status, "ts": int(time.time())}
    if mark is not None:
        body["mark"] = mark
    return _json(body)


def play(session: int, *, mark: str | None = None) -> bytes:
    body: dict[str, object] = {"v": 1, "session": session, "ts": int(time.time()), "st": "idle", "src": "none",
                               "vol": 50, "why": "boot"}
    if mark is not None:
        body["mark"] = mark
    return _json(body)


def command(command_id: str, *, mark: str | None = None) -> bytes:
    now = int(time.time())
    body: dict[str, object] = {"v": 1, "id": command_id, "op": "reboot", "pri": "emergency", "ts": now,
                               "exp": now + 600}
    if mark is not None:
        body["mark"] = mark
    return _json(body)


def carrying(mark: str):  # type: ignore[no-untyped-def]
    """A predicate: the message carries ``mark``."""
    needle = mark.encode()
    return lambda m: needle in m.payload


def about(rid: str):  # type: ignore[no-untyped-def]
    """A predicate: the message is on one of ``rid``'s topics or mentions it."""
    prefix, needle = f"loa/v1/rx/{rid}/", rid.encode()
    return lambda m: m.topic.startswith(prefix) or needle in m.payload or m.topic == f"loa/v1/rx/{rid}"


@dataclass
class Rx:
    """A receiver that is online: logged in with its Will, subscribed to its own topics, birth
    published and seen online by the service."""

    rid: str
    password: str
    session: int
    client: MqttClient
    birth: bytes
    will: bytes
    will_mark: str
    seq: int = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def online_receiver(backend: ServiceBackend, clients: Clients, prefix: str = "rx", *,
                    credentials: tuple[str, str] | None = None, bind_address: str = "") -> Rx:
    rid, password = credentials or backend.receiver(prefix)
    session = random.randint(1, 2**31)
    will_mark = tag(f"will-of-{rid}")
    will = state("offline", session, "lost", mark=will_mark)
    client = clients.connect(rid, rid, password, will=Will(topic(rid, "state"), will), bind_address=bind_address)
    assert client.accepted, f"{rid} could not log in: {client.connack}"
    assert client.subscribe(f"loa/v1/rx/{rid}/#"), f"{rid} could not subscribe to its own topics"
    birth = state("online", session, "boot", fw=FIRMWARE)
    assert client.publish(topic(rid, "state"), birth, retain=True), f"{rid}'s birth was not acknowledged"
    assert backend.wait_live(rid, lambda r: r["state"] == "online"), f"the service never saw {rid} online"
    return Rx(rid, password, session, client, birth, will, will_mark)


def monitor(backend: ServiceBackend, clients: Clients, topic_filter: str = "loa/v1/rx/#") -> MqttClient:
    """A witness with the service's rights: it receives what the service would."""
    username, password = backend.monitor_login()
    witness = clients.connect(f"{MONITOR_PREFIX}-{uuid.uuid4().hex[:8]}", username, password)
    assert witness.accepted, f"the monitor could not log in with the service's rights: {witness.connack}"
    assert witness.subscribe(topic_filter), "the monitor could not subscribe"
    return witness


def deliver_command(backend: ServiceBackend, rx: Rx, timeout: float = WAIT_S) -> tuple[str, Received | None]:
    """Send ``rx`` a command through the API; (its id, the message ``rx`` received, or None)."""
    command_id = backend.send_command(rx.rid)
    got = rx.client.wait_for(lambda m: m.topic == topic(rx.rid, "cmd") and command_id.encode() in m.payload,
                             timeout)
    return command_id, got


def marker(rx: Rx, *witnesses: MqttClient, timeout: float = WAIT_S) -> bool:
    """``rx`` publishes an event; True once it and every witness received it. Whatever reached
    them before (from an earlier attack) has arrived by then."""
    mark = tag("marker")
    if not rx.client.publish(topic(rx.rid, "event"), event(rx.session, mark)):
        return False
    return all(w.wait_for(carrying(mark), timeout) is not None for w in (rx.client, *witnesses))


def retained(backend: ServiceBackend, clients: Clients, topic_filter: str, *, expect: str | None = None,
             settle_s: float = 0.5) -> list[Received]:
    """The retained messages a fresh subscriber with the service's rights gets for
    ``topic_filter``; waits for one on topic ``expect`` first, if given."""
    witness = monitor(backend, clients, topic_filter)
    if expect is not None:
        witness.wait_for(lambda m: m.topic == expect and m.retain)
    time.sleep(settle_s)
    witness.close()
    return [m for m in witness.received() if m.retain]


def ack_reaches_api(backend: ServiceBackend, rx: Rx, timeout: float = 10.0) -> str:
    """A positive control for acknowledgements: ``rx`` answers a fresh command with 'done' and
    the API shows it (the service writes outcomes once answers pause, within 5 s). Returns the
    command's id."""
    command_id, got = deliver_command(backend, rx)
    assert got is not None, f"{rx.rid} did not receive a command sent through the API"
    assert rx.client.publish(topic(rx.rid, "ack"), ack(rx.session, command_id))
    deadline = time.monotonic() + timeout
    while backend.target_status(command_id, rx.rid) != "done":
        assert time.monotonic() < deadline, f"{rx.rid}'s own acknowledgement never reached the API"
        time.sleep(0.2)
    return command_id
