"""What a receiver puts on the wire, seen from the broker, and the rules every message obeys.

The observer is an MQTT 5 client (the receivers speak 3.1.1; the broker translates). It
subscribes with three MQTT 5 subscription options that make a receiver's publications
observable exactly:

* QoS 2, so that a message arrives with the QoS it was published with;
* *retain as published*, so that the retain flag is the publisher's, not cleared as MQTT
  does for a live subscription;
* *no local*, so that nothing the observer publishes itself (commands, a stale state) comes
  back: everything it sees was published by the receiver, or by the broker on the receiver's
  behalf (its Last Will).

Its session outlives a broker restart (session expiry, and the production broker persists
sessions), so QoS 1 messages published while it reconnects are delivered afterwards; retained
messages are sent only for a new subscription, not again at every reconnection.

Each message is checked as it arrives against the rules of ``fleet_service/protocol/schema.json``
(the copy other implementations validate against) and the service's codec; violations are
collected and fail the test at its next wait and at its end.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from fleet_service.config import Settings
from fleet_service.protocol import Ack, DecodeError, Event, PlayStatus, State, StateMessage, Telemetry, decode
from fleet_service.protocol.messages import UpdateStatus
from fleet_service.protocol.schema import SCHEMA_PATH

Message = StateMessage | Telemetry | Event | Ack | PlayStatus | UpdateStatus

# Longest the observer's session is kept while it is away (a broker restart takes ~1 s).
_SESSION_EXPIRY_S = 300


@dataclass(frozen=True)
class Rules:
    """What schema.json says about each message kind, and the service's size limit."""

    root: str
    qos: dict[str, int]
    retain: dict[str, bool]
    validators: dict[str, jsonschema.protocols.Validator]
    max_payload_bytes: int

    @classmethod
    def load(cls) -> Rules:
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        messages: dict[str, Any] = schema["messages"]
        validators = {}
        for kind, spec in messages.items():
            payload_schema = spec["payload"]
            jsonschema.Draft202012Validator.check_schema(payload_schema)
            validators[kind] = jsonschema.Draft202012Validator(payload_schema)
        return cls(
            root=schema["topic_root"],
            qos={kind: spec["qos"] for kind, spec in messages.items()},
            retain={kind: spec["retain"] for kind, spec in messages.items()},
            validators=validators,
            max_payload_bytes=Settings().max_payload_bytes,
        )

    def topic(self, receiver_id: str, kind: str) -> str:
        return f"{self.root}/{receiver_id}/{kind}"

    def check(self, receiver_id: str, topic: str, payload: bytes, qos: int,
              retain: bool) -> tuple[Message | None, list[str]]:
        """The decoded message (None if it does not decode) and every rule it breaks."""
        problems: list[str] = []
        own = f"{self.root}/{receiver_id}/"
        if not topic.startswith(own):
            return None, [f"published outside {own}"]
        kind = topic[len(own):]
        if kind == "cmd":
            return None, ["published on its own cmd topic (service to receiver only)"]
        if kind not in self.validators:
            kinds = ", ".join(sorted(self.validators))
            return None, [f"published on {topic!r}: not a message of the protocol ({kinds})"]
        if len(payload) > self.max_payload_bytes:
            problems.append(f"payload of {len(payload)} bytes, more than the service's {self.max_payload_bytes}")
        if qos != self.qos[kind]:
            problems.append(f"QoS {qos}, the protocol says {self.qos[kind]}")
        if retain != self.retain[kind]:
            problems.append(f"retain flag {int(retain)}, the protocol says {int(self.retain[kind])}")
        message: Message | None = None
        try:
            message = decode(topic, payload, max_bytes=self.max_payload_bytes).message
        except DecodeError as exc:
            problems.append(f"the service's codec refuses it: {exc}")
        try:
            document = json.loads(payload)
        except ValueError as exc:
            problems.append(f"not JSON: {exc}")
        else:
            for error in self.validators[kind].iter_errors(document):
                where = "/".join(str(p) for p in error.absolute_path) or "payload"
                problems.append(f"schema.json: {where}: {error.message}")
        return message, problems


@dataclass(frozen=True)
class Seen:
    t: float  # time.monotonic() when the observer received it
    topic: str
    payload: bytes
    qos: int
    retain: bool
    message: Message | None
    problems: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[-1]

    def describe(self) -> str:
        return f"{self.topic} q{self.qos} r{int(self.retain)} {self.payload[:300]!r}"


class WireViolation(AssertionError):
    pass


class Observer:
    """Records (and checks) everything one receiver publishes, through a broker."""

    def __init__(self, host: str, port: int, username: str, password: str, receiver_id: str, *,
                 topic_filter: str, rules: Rules, client_id: str = "conformance-observer") -> None:
        self.host, self.port = host, port
        self.receiver_id = receiver_id
        self.rules = rules
        self._username, self._password = username, password
        self._topic_filter = topic_filter
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        client.username_pw_set(username, password)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *args: self._subscribed.set()
        client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = _SESSION_EXPIRY_S
        # A clean start the first time only: a reconnection resumes the session.
        client.connect(host, port, keepalive=10, clean_start=mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=properties)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"the observer could not subscribe to {topic_filter} on {host}:{port}")

    # -- paho callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        # retainHandling 1: the retained messages come with a new subscription only, not
        # again when a resumed session already holds it.
        options = SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True, retainHandling=1)
        client.subscribe(self._topic_filter, options=options)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        t = time.monotonic()
        payload = bytes(msg.payload)
        message, problems = self.rules.check(self.receiver_id, msg.topic, payload, msg.qos, bool(msg.retain))
        with self._lock:
            self._seen.append(Seen(t, msg.topic, payload, msg.qos, bool(msg.retain), message, tuple(problems)))

    # -- reading ---------------------------------------------------------------------------

    def seen(self, *, after: float = float("-inf"), before: float = float("inf")) -> list[Seen]:
        with self._lock:
            return [m for m in self._seen if after <= m.t < before]

    def messages(self, kind: type | None = None, *, after: float = float("-inf"),
                 before: float = float("inf")) -> list[tuple[Seen, Any]]:
        """(seen, decoded) for every decodable message (of one model class, if given)."""
        return [(m, m.message) for m in self.seen(after=after, before=before)
                if m.message is not None and (kind is None or isinstance(m.message, kind))]

    def violations(self) -> list[str]:
        return [f"{problem}: {m.describe()}" for m in self.seen() for problem in m.problems]

    def assert_conformant(self) -> None:
        problems = self.violations()
        if problems:
            raise WireViolation(f"{len(problems)} violation(s) on the wire:\n  " + "\n  ".join(problems[:30]))

    async def wait_for(self, predicate: Callable[[Seen, Any], bool], *, timeout: float, after: float,
                       what: str) -> tuple[Seen, Any]:
        """The first decodable message received at or after ``after`` for which
        ``predicate(seen, message)`` holds. Fails at once if a rule has been broken."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_conformant()
            for m, message in self.messages(after=after):
                if predicate(m, message):
                    return m, message
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout:g}s; seen since then:\n  "
                                     + "\n  ".join(m.describe() for m in self.seen(after=after)[-20:]))
            await asyncio.sleep(0.02)

    async def wait_state(self, state: State, *, timeout: float, after: float, what: str,
                         where: Callable[[StateMessage], bool] = lambda s: True) -> tuple[Seen, StateMessage]:
        return await self.wait_for(
            lambda m, s: isinstance(s, StateMessage) and s.state is state and where(s),
            timeout=timeout, after=after, what=what)

    async def wait_telemetry(self, session: int, count: int, *, timeout: float,
                             after: float) -> list[tuple[Seen, Telemetry]]:
        """At least ``count`` telemetry reports of ``session`` received after ``after``."""
        deadline = time.monotonic() + timeout
        while True:
            self.assert_conformant()
            reports = [(m, r) for m, r in self.messages(Telemetry, after=after) if r.session == session]
            if len(reports) >= count:
                return reports
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(reports)} telemetry report(s) of session {session} within "
                                     f"{timeout:g}s, {count} expected")
            await asyncio.sleep(0.02)

    # -- acting as the service -------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement (blocking: call it in a thread)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        if not info.is_published():
            raise RuntimeError(f"publishing to {topic} was not acknowledged")

    def retained_state(self, timeout: float = 2.0) -> StateMessage | None:
        """The receiver's retained state as a new subscriber gets it (blocking)."""
        got: list[bytes] = []
        done = threading.Event()
        topic = self.rules.topic(self.receiver_id, "state")
        probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"conformance-probe-{time.monotonic_ns()}")
        probe.username_pw_set(self._username, self._password)

        def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
            got.append(bytes(m.payload))
            done.set()

        probe.on_message = on_message
        probe.on_subscribe = lambda *args: threading.Timer(0.3, done.set).start()
        probe.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        probe.connect(self.host, self.port)
        probe.loop_start()
        try:
            done.wait(timeout)
        finally:
            probe.disconnect()
            probe.loop_stop()
        if not got:
            return None
        message = decode(topic, got[0], max_bytes=self.rules.max_payload_bytes).message
        assert isinstance(message, StateMessage)
        return message

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def sessions_in_order(seen: Iterable[tuple[Seen, Any]]) -> list[int]:
    """Sessions of the births, in the order they were seen, a re-asserted birth counted once."""
    out: list[int] = []
    for _, message in seen:
        if not isinstance(message, StateMessage) or message.state is not State.ONLINE:
            continue
        if not out or out[-1] != message.session:
            out.append(message.session)
    return out
