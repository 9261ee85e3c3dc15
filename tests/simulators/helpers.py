"""Test helpers: a private Mosquitto with per-receiver passwords and the receiver ACL, and an
observer that records (and decodes) everything published under loa/v1/rx/."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from fleet_service.protocol import Decoded, MessageKind, decode
from fleet_service.protocol.topics import receiver_acl_pattern
from tests.support.mosquitto import MosquittoServer, mosquitto, write_password_file
from tests.support.ports import free_port

OBSERVER = "observer"
OBSERVER_PASSWORD = "observer-secret"


def write_acl_file(path: Path) -> None:
    path.write_text(
        f"user {OBSERVER}\ntopic readwrite loa/v1/rx/#\n\n"
        f"pattern readwrite {receiver_acl_pattern()}\n"
    )


class SecureBroker:
    """Mosquitto with password file and ACL, restartable on the same port."""

    def __init__(self, directory: Path, credentials: dict[str, str]) -> None:
        self.directory = directory
        self.port = free_port()
        self.host = "127.0.0.1"
        directory.mkdir(parents=True, exist_ok=True)
        write_password_file(directory / "passwords", {**credentials, OBSERVER: OBSERVER_PASSWORD})
        write_acl_file(directory / "acl")
        self._config = (
            "allow_anonymous false\n"
            f"password_file {directory / 'passwords'}\n"
            f"acl_file {directory / 'acl'}\n"
        )
        self._stack = ExitStack()
        self.server: MosquittoServer | None = None

    def start(self) -> None:
        self.server = self._stack.enter_context(mosquitto(self.directory, self._config, port=self.port))

    def stop(self) -> None:
        self._stack.close()
        self._stack = ExitStack()
        self.server = None

    @property
    def log(self) -> str:
        return (self.directory / "mosquitto.log").read_text(errors="replace")


@dataclass(frozen=True)
class Seen:
    t: float  # time.time() when the observer received it
    topic: str
    payload: bytes
    retained: bool

    @property
    def kind(self) -> str:
        return self.topic.rsplit("/", 1)[1]

    @property
    def receiver(self) -> str:
        return self.topic.split("/")[3]

    def decoded(self) -> Decoded:
        return decode(self.topic, self.payload, max_bytes=4096)


class Observer:
    """A paho client subscribed to loa/v1/rx/# that records every message."""

    def __init__(self, host: str, port: int, *, client_id: str = "observer") -> None:
        self._lock = threading.Lock()
        self._messages: list[Seen] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.username_pw_set(OBSERVER, OBSERVER_PASSWORD)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("observer could not subscribe")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        client.subscribe("loa/v1/rx/#", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        seen = Seen(time.time(), message.topic, bytes(message.payload), bool(message.retain))
        with self._lock:
            self._messages.append(seen)

    def messages(self, receiver: str | None = None, kind: str | None = None) -> list[Seen]:
        with self._lock:
            items = list(self._messages)
        return [m for m in items if (receiver is None or m.receiver == receiver) and (kind is None or m.kind == kind)]

    def protocol_messages(self) -> list[tuple[Seen, Decoded]]:
        """Every message on a protocol topic, decoded (DecodeError fails the test)."""
        kinds = {k.value for k in MessageKind}
        return [(m, m.decoded()) for m in self.messages() if m.kind in kinds]

    def states(self, receiver: str) -> list[tuple[float, object]]:
        return [(m.t, m.decoded().message) for m in self.messages(receiver, "state")]

    async def wait_for(self, predicate: Callable[[Seen], bool], *, timeout: float = 10.0, after: float = 0.0) -> Seen:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages():
                if m.t >= after and m.kind in {k.value for k in MessageKind} and predicate(m):
                    return m
            if time.monotonic() > deadline:
                raise TimeoutError("observer did not see the expected message")
            await asyncio.sleep(0.02)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()  # first, so that the network thread ends at once
        self.client.loop_stop()


def retained_state(host: str, port: int, receiver: str) -> Decoded | None:
    """What a new subscriber gets as the retained state of a receiver (None: nothing)."""
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    client.username_pw_set(OBSERVER, OBSERVER_PASSWORD)

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        got.append(m)
        done.set()

    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(f"loa/v1/rx/{receiver}/state", qos=1)
    client.connect(host, port)
    client.loop_start()
    done.wait(1.0)
    client.disconnect()
    client.loop_stop()
    if not got:
        return None
    return decode(got[0].topic, bytes(got[0].payload), max_bytes=4096)


def credentials(n: int, prefix: str = "rx") -> dict[str, str]:
    return {f"{prefix}-{i:03d}": f"secret-{i:03d}" for i in range(n)}


# Short timings so that the directory runs in well under a minute.
FAST = dict(
    keepalive=1,
    telemetry_interval=0.3,
    connect_timeout=1.0,
    ack_timeout=2.0,
    backoff_base=0.1,
    backoff_cap=0.5,
    attach_delay=(0.0, 0.05),
    seed=7,
)
