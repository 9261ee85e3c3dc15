"""The embedded broker: amqtt running inside the service process, the one-command default for
a small district. Logins and topic rights come from the registry at every CONNECT, so a
provisioned receiver can log in at once and a revoked one is refused (and dropped) at once.

amqtt speaks MQTT 3.1.1 only, which is what receivers speak. For production districts and
beyond, use Mosquitto (broker/mosquitto_dynsec.py)."""

from __future__ import annotations

import asyncio
import hmac
import math
import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from fleet_service.protocol.topics import COMMAND_LEVEL, RECEIVER_PUBLISHES, TOPIC_ROOT

log = logging.getLogger(__name__)

_RECEIVER_PUBLISHES = frozenset(RECEIVER_PUBLISHES)


class Principal(StrEnum):
    SERVICE = "service"
    RECEIVER = "receiver"


@dataclass(frozen=True)
class LoginRules:
    """Who may log in. ``verify_receiver`` is called in a worker thread (it reads the registry)."""

    service_username: str
    service_password: str
    verify_receiver: Callable[[str, str], bool]


def receiver_may(action: str, receiver_id: str, topic: str) -> bool:
    """A receiver publishes only its own state/telemetry/event, and subscribes to and receives
    only topics under its own loa/v1/rx/<id>/."""
    prefix = f"{TOPIC_ROOT}/{receiver_id}/"
    if not topic.startswith(prefix):
        return False
    rest = topic[len(prefix):]
    if action == Action.PUBLISH:
        return rest in _RECEIVER_PUBLISHES
    # Subscribing to a filter: wildcards are fine as long as they stay below its own prefix.
    return "/" not in rest or rest == "#"


def service_may(action: str, topic: str) -> bool:
    """The service reads everything under loa/v1/rx/ and publishes only commands."""
    if not topic.startswith(f"{TOPIC_ROOT}/"):
        return False
    if action == Action.PUBLISH:
        levels = topic[len(TOPIC_ROOT) + 1:].split("/")
        return len(levels) == 2 and levels[1] == COMMAND_LEVEL
    return True


class RegistryAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        rules: Any = None  # LoginRules; Any because amqtt builds this dataclass with dacite

    async def authenticate(self, *, session: Session) -> bool | None:
        rules: LoginRules = self.context.config.rules  # type: ignore[union-attr]
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        username, password, client_id = session.username, session.password, session.client_id
        if not username or password is None:
            log.info("login refused: no credentials (client id %r)", client_id)
            return False
        if hmac.compare_digest(username.encode(), rules.service_username.encode()):
            ok = hmac.compare_digest(password.encode(), rules.service_password.encode())
            session.loa_principal = Principal.SERVICE if ok else None  # type: ignore[attr-defined]
            if not ok:
                log.warning("login refused: wrong password for the service account")
            return ok
        if client_id != username:
            log.info("login refused: receiver %r must use its id as client id (got %r)", username, client_id)
            return False
        ok = await asyncio.to_thread(rules.verify_receiver, username, password)
        session.loa_principal = Principal.RECEIVER if ok else None  # type: ignore[attr-defined]
        if not ok:
            log.info("login refused: unknown, revoked or wrong password for receiver %r", username)
        return ok


class ReceiverTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        pass

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        principal = getattr(session, "loa_principal", None)
        if principal is Principal.SERVICE:
            return service_may(action, topic)
        if principal is Principal.RECEIVER and session.username:
            return receiver_may(action, session.username, topic)
        return False


class _SnapshotDict(dict):  # type: ignore[type-arg]
    """amqtt 0.12 iterates its subscription table across awaits; a client subscribing meanwhile
    makes that loop fail ("dictionary changed size during iteration") and drops the message
    being broadcast. Iterating over a snapshot makes each loop see one consistent table."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(super().keys()))

    def items(self):  # type: ignore[no-untyped-def]
        return list(super().items())


class _LoaBroker(Broker):
    """amqtt's Broker with two fixes that the receivers' isolation depends on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SnapshotDict()

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int], session: Session) -> None:
        # amqtt sends a connecting client the retained messages matching *every* client's
        # subscriptions and skips the ACL on this path, so a receiver would get the retained
        # state of every other receiver (and each connect cost O(filters x retained)). Deliver
        # only for the client's own subscriptions, and only what it may receive.
        topic_filter, qos = subscription
        if not any(s is session for s, _ in dict.get(self._subscriptions, topic_filter, ())):
            return
        handler = self._get_handler(session)
        if handler is None:
            return
        sends = []
        for topic, retained in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                continue
            sends.append(asyncio.ensure_future(
                handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)))
        if sends:
            await asyncio.wait(sends)


class EmbeddedBroker:
    def __init__(self, host: str, port: int, rules: LoginRules) -> None:
        self.host = host
        self.port = port
        self.rules = rules
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._broker = _LoaBroker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                # amqtt adds this many seconds to every client's keepalive; instead each login
                # gets 1.5x its own keepalive (RegistryAuthPlugin), as MQTT 3.1.1 and Mosquitto
                # do, so the detection latency is the same on both brokers.
                "timeout_disconnect_delay": 0,
                "plugins": {
                    f"{__name__}.RegistryAuthPlugin": {"rules": self.rules},
                    f"{__name__}.ReceiverTopicPlugin": {},
                },
            }
        )
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def disconnect(self, client_id: str) -> bool:
        """Drop a live session now (its Last Will is published, as for any lost link)."""
        if self._broker is None:
            return False
        entry = self._broker.sessions.get(client_id)
        if entry is None:
            return False
        session, handler = entry
        if not session.transitions.is_connected():
            return False
        await handler.handle_connection_closed()
        return True

    def accounts(self) -> EmbeddedBrokerAccounts:
        return EmbeddedBrokerAccounts(self)


class EmbeddedBrokerAccounts:
    """BrokerAccounts for the embedded broker: logins are read from the registry, so only
    revocation has work to do (drop the live session)."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    def add_receiver(self, receiver_id: str, password: str) -> None:
        return None

    def remove_receiver(self, receiver_id: str) -> None:
        loop = self._broker._loop
        if loop is None:
            return
        coroutine = self._broker.disconnect(receiver_id)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(coroutine)
            return
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            future.result(timeout=10)
        except FutureTimeout:
            log.error("could not drop the session of revoked receiver %s within 10 s", receiver_id)
