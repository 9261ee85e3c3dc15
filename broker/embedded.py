"""The embedded broker: amqtt running inside the service process, the one-command default for
a small district. Logins and topic rights come from the registry at every CONNECT, so a
provisioned receiver can log in at once and a revoked one is refused (and dropped) at once.

amqtt speaks MQTT 3.1.1 only, which is what receivers speak. For production districts and
beyond, use Mosquitto (broker/mosquitto_dynsec.py).

amqtt 0.12.1 (the newest release) is not safe against a hostile client as it ships; `_LoaBroker`
replaces the parts that are not, each saying which upstream behaviour it replaces and why:
the login is checked before any stored session is looked at, a refused connection leaves
nothing behind, a Last Will is checked against the client's rights at CONNECT, packets are
capped in size, and a connecting client gets only the retained messages it may read.
docs/security.md lists what each broker guarantees and how tests/broker/security checks it."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import ssl
import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from fleet_service.broker_port import BrokerAccounts
from fleet_service.protocol.topics import COMMAND_LEVEL, RECEIVER_PUBLISHES, TOPIC_ROOT, MessageKind

log = logging.getLogger(__name__)

_RECEIVER_PUBLISHES = frozenset(RECEIVER_PUBLISHES)

# Largest MQTT packet accepted, as Mosquitto's production configuration (max_packet_size):
# the largest command is about 8 KB and a receiver's report well under 4 KB.
MAX_PACKET_BYTES = 65536
# Refused logins are logged at most once per client address and reason in this many seconds,
# with the count of those not logged: a flood must not flood the log too.
REFUSAL_LOG_INTERVAL_S = 10.0


class Principal(StrEnum):
    SERVICE = "service"
    RECEIVER = "receiver"


class LoginLimiter:
    """Failed MQTT logins per client address and per username, in a sliding minute. Past either
    limit, logins are refused without being checked, for the rest of the window: a password
    guesser gets nowhere and costs nothing. Only failures count, because thousands of receivers
    share a few carrier-grade NAT addresses and all log in at once after a broker restart."""

    def __init__(self, failures_per_address: int, failures_per_username: int) -> None:
        self._per_address = RateLimitItemPerMinute(failures_per_address)
        self._per_username = RateLimitItemPerMinute(failures_per_username)
        self._window = SlidingWindowCounterRateLimiter(MemoryStorage())

    def blocked(self, address: str, username: str | None) -> str | None:
        """Why a login from ``address`` as ``username`` is refused unchecked, or None."""
        if not self._window.test(self._per_address, "mqtt-address", address):
            return "too many failed logins from this address"
        if username and not self._window.test(self._per_username, "mqtt-username", username):
            return "too many failed logins for this username"
        return None

    def failed(self, address: str, username: str | None) -> None:
        self._window.hit(self._per_address, "mqtt-address", address)
        if username:
            self._window.hit(self._per_username, "mqtt-username", username)


@dataclass(frozen=True)
class LoginRules:
    """Who may log in. ``verify_receiver`` is called in a worker thread (it reads the registry)."""

    service_username: str
    service_password: str
    verify_receiver: Callable[[str, str], bool]
    limiter: LoginLimiter | None = None


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


def will_allowed(principal: Principal, username: str, topic: str) -> bool:
    """A receiver's Last Will says it went offline: its own state topic, nothing else. The
    service needs no Will; one on a topic it may publish to is tolerated."""
    if principal is Principal.RECEIVER:
        return topic == f"{TOPIC_ROOT}/{username}/{MessageKind.STATE.value}"
    return service_may(Action.PUBLISH, topic)


class _RefusalLog:
    """At most one log line per (address, reason) per REFUSAL_LOG_INTERVAL_S, counting the rest."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def refused(self, address: str, client_id: str | None, username: str | None, reason: str) -> None:
        now = time.monotonic()
        key = (address, reason)
        last, suppressed = self._last.get(key, (-REFUSAL_LOG_INTERVAL_S, 0))
        if now - last < REFUSAL_LOG_INTERVAL_S:
            self._last[key] = (last, suppressed + 1)
            return
        if len(self._last) > 10_000:  # many addresses: forget the old ones rather than grow
            self._last.clear()
        self._last[key] = (now, 0)
        more = f" ({suppressed} more like it not logged)" if suppressed else ""
        log.warning("MQTT login refused from %s: %s (client id %r, username %r)%s / từ chối đăng nhập MQTT",
                    address, reason, client_id, username, more)


class RegistryAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        rules: Any = None  # LoginRules; Any because amqtt builds this dataclass with dacite
        refusals: Any = None  # _RefusalLog

    async def authenticate(self, *, session: Session) -> bool | None:
        config = cast(RegistryAuthPlugin.Config, self.context.config)  # amqtt built it from our Config
        rules: LoginRules = config.rules
        address = getattr(session, "remote_address", None) or "?"
        username, password, client_id = session.username, session.password, session.client_id

        def refuse(reason: str) -> bool:
            config.refusals.refused(address, client_id, username, reason)
            return False

        # The service's own login is never held back by the limits (its secret is long and
        # random, and a flood from its address must not lock it out of its own broker).
        is_service = bool(username) and hmac.compare_digest((username or "").encode(),
                                                            rules.service_username.encode())
        if rules.limiter is not None and not is_service:
            blocked = rules.limiter.blocked(address, username)
            if blocked:
                return refuse(blocked)
        principal = await self._check_login(rules, username, password, client_id)
        if not isinstance(principal, Principal):
            if rules.limiter is not None:
                rules.limiter.failed(address, username)
            return refuse(principal)
        if session.will_flag and not will_allowed(principal, username or "", session.will_topic or ""):
            return refuse(f"Last Will on a topic it may not publish to ({session.will_topic!r})")
        session.loa_principal = principal  # type: ignore[attr-defined]
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * 1.5)
        return True

    @staticmethod
    async def _check_login(rules: LoginRules, username: str | None, password: str | None,
                           client_id: str | None) -> Principal | str:
        """The principal, or why the login is refused."""
        if not username or password is None:
            return "no credentials"
        if hmac.compare_digest(username.encode(), rules.service_username.encode()):
            if hmac.compare_digest(password.encode(), rules.service_password.encode()):
                return Principal.SERVICE
            return "wrong password for the service account"
        if client_id != username:
            return "a receiver must use its id as client id"
        if await asyncio.to_thread(rules.verify_receiver, username, password):
            return Principal.RECEIVER
        return "unknown, revoked or wrong password"


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


class PacketTooLarge(Exception):
    """A packet would need a read larger than the broker's packet limit."""


class _BoundedReader(StreamReaderAdapter):
    """amqtt 0.12.1 reads a packet of any announced length, buffering it whole (a 16 MB publish
    was accepted and acknowledged). Every part of a packet is read in one call no longer than
    the packet, so refusing any read above the limit caps packets at about that size; the
    connection is then closed, as Mosquitto closes it for a packet above max_packet_size."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int, peer: str) -> None:
        super().__init__(reader)
        self._max_bytes = max_bytes
        self._peer = peer

    async def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self._max_bytes:
            log.warning("MQTT packet larger than %d bytes from %s: connection closed / gói tin quá lớn",
                        self._max_bytes, self._peer)
            self.feed_eof()
            raise PacketTooLarge(f"a read of {n} bytes exceeds the limit of {self._max_bytes}")
        return await super().read(n)


class LoginRefused(AMQTTError):
    """The CONNECT's login was refused (CONNACK 5 sent, connection closed, nothing kept)."""


class _NoRepeatOfRefusals(logging.Filter):
    """amqtt logs every failed session set-up; a refused login is logged (and throttled) by
    RegistryAuthPlugin already, so its second line goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login refused" not in record.getMessage()


class _OneLineForSlowClients(logging.Filter):
    """amqtt logs a delivery that a client did not acknowledge within its 5 s (a receiver on a
    slow 4G link, a loaded machine) as a failed task with a traceback. It is not a fault of the
    broker, and a command waits for the receiver's next birth anyway: one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TimeoutError):
            record.msg, record.args = "a delivery was not acknowledged in time / giao tin không được xác nhận: %s", (
                error,)
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("amqtt.broker").addFilter(_NoRepeatOfRefusals())
logging.getLogger("amqtt.broker").addFilter(_OneLineForSlowClients())


class _LoaBroker(Broker):
    """amqtt's Broker with the fixes that the receivers' isolation depends on."""

    def __init__(self, *args: Any, max_packet_bytes: int = MAX_PACKET_BYTES, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._subscriptions = _SnapshotDict()
        self._max_packet_bytes = max_packet_bytes

    async def stream_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               listener_name: str) -> None:
        # Replaces upstream's: the same, with the size-capped reader.
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if peer else "?"
        await self._client_connected(listener_name, _BoundedReader(reader, self._max_packet_bytes, address),
                                     StreamWriterAdapter(writer))

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str,
                                         remote_port: int) -> tuple[BrokerProtocolHandler, Session]:
        """Replaces upstream's, which looked up, reset (clean session) or took over (persistent
        session) the stored session of the CONNECT's client id *before* the login was checked,
        and then registered the refused session too: a CONNECT without credentials could wipe
        another client's subscriptions or kick it off without its Will, publish its own Will,
        and each refusal kept ~33 KiB for good. Here the login is checked first, on a fresh
        session; a refused one is answered, closed and forgotten. Only then does upstream's
        session handling run, with a take-over that closes the old connection in both cases."""
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except (AMQTTError, NoDataError) as exc:
            raise AMQTTError(f"no CONNECT from {remote_address}:{remote_port}: {exc!r}") from None
        except MQTTError:
            await writer.close()
            raise
        except PacketTooLarge as exc:
            await writer.close()
            raise AMQTTError(str(exc)) from None
        if not await super()._authenticate(incoming, None):  # type: ignore[arg-type]  # upstream ignores it
            handler.attach(incoming, reader, writer)
            incoming.parent = 0
            try:
                await handler.mqtt_connack_authorize(False)
            except Exception:  # the client may be gone already; it is refused either way
                pass
            finally:
                await writer.close()
                handler.detach()
            raise LoginRefused(f"login refused for {remote_address}:{remote_port}")
        incoming.loa_authenticated = True  # type: ignore[attr-defined]

        client_id = incoming.client_id
        existing = self._sessions.get(client_id) if client_id else None
        if existing is not None and existing[0].transitions.is_connected():
            # The same (authenticated) client again: MQTT 3.1.1 3.1.4-2, the old connection
            # goes, with its Will as for any lost link. Upstream left it open with clean session.
            old_session, old_handler = existing
            await old_handler.handle_connection_closed()
            await old_handler.stop()
            for _ in range(100):  # its message loop marks it disconnected; the stored session may be reused
                if not old_session.transitions.is_connected():
                    break
                await asyncio.sleep(0.01)
        if incoming.clean_session:
            if client_id:
                await self._delete_session(client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
            return handler, incoming
        if existing is None:
            incoming.parent = 0
            return handler, incoming
        stored, _ = existing
        for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                     "username", "password", "remote_address", "remote_port", "loa_principal",
                     "loa_authenticated"):
            setattr(stored, name, getattr(incoming, name, None))
        stored.parent = 1
        return handler, stored

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # Upstream authenticates here, after the session lookup; the login was checked in
        # _initialize_client_session, before it.
        authenticated = bool(getattr(session, "loa_authenticated", False))
        session.loa_authenticated = False  # type: ignore[attr-defined]
        return authenticated

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


@dataclass(frozen=True)
class TlsListener:
    """The receivers' listener over TLS (8883), with the same certificate as Mosquitto's."""

    host: str
    port: int
    certfile: str
    keyfile: str


class EmbeddedBroker:
    def __init__(self, host: str, port: int, rules: LoginRules, *, tls: TlsListener | None = None,
                 max_packet_bytes: int = MAX_PACKET_BYTES) -> None:
        self.host = host
        self.port = port
        self.rules = rules
        self.tls = tls
        self.max_packet_bytes = max_packet_bytes
        self._broker: _LoaBroker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _listeners(self) -> dict[str, dict[str, Any]]:
        listeners: dict[str, dict[str, Any]] = {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}
        if self.tls is not None:
            # Fail here, with the file named, rather than at the first receiver's handshake.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls.certfile, self.tls.keyfile)
            listeners["tls"] = {"type": "tcp", "bind": f"{self.tls.host}:{self.tls.port}", "ssl": True,
                                "certfile": self.tls.certfile, "keyfile": self.tls.keyfile}
        return listeners

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._broker = _LoaBroker(
            {
                "listeners": self._listeners(),
                # amqtt adds this many seconds to every client's keepalive; instead each login
                # gets 1.5x its own keepalive (RegistryAuthPlugin), as MQTT 3.1.1 and Mosquitto
                # do, so the detection latency is the same on both brokers.
                "timeout_disconnect_delay": 0,
                "plugins": {
                    f"{__name__}.RegistryAuthPlugin": {"rules": self.rules, "refusals": _RefusalLog()},
                    f"{__name__}.ReceiverTopicPlugin": {},
                },
            },
            max_packet_bytes=self.max_packet_bytes,
        )
        await self._broker.start()
        log.info("embedded MQTT broker listening on %s:%s", self.host, self.port)
        if self.tls is not None:
            log.info("embedded MQTT broker listening with TLS on %s:%s", self.tls.host, self.tls.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    @property
    def session_count(self) -> int:
        """Sessions the broker holds (connected or kept for a persistent client)."""
        return len(self._broker.sessions) if self._broker is not None else 0

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

    async def drop_if_no_longer_valid(self, receiver_id: str) -> bool:
        """Drop the receiver's live session if the password it logged in with is no longer
        valid (revoked, or replaced by a new one). Checked against the registry rather than by
        time, so a receiver that already logged in again with its new password stays."""
        if self._broker is None:
            return False
        entry = self._broker.sessions.get(receiver_id)
        if entry is None or not entry[0].transitions.is_connected():
            return False
        session = entry[0]
        if getattr(session, "loa_principal", None) is not Principal.RECEIVER:
            return False
        password = session.password or ""
        if await asyncio.to_thread(self.rules.verify_receiver, receiver_id, password):
            return False
        log.info("dropping the session of receiver %s: its password is no longer valid", receiver_id)
        return await self.disconnect(receiver_id)

    def accounts(self) -> EmbeddedBrokerAccounts:
        return EmbeddedBrokerAccounts(self)


class EmbeddedBrokerAccounts(BrokerAccounts):
    """The service's BrokerAccounts for the embedded broker: logins are read from the registry at every
    CONNECT, so what is left to do is to drop the live session that logged in with a password
    no longer valid, on revocation and on a new password alike."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    def add_receiver(self, receiver_id: str, password: str) -> None:
        # The new password replaces every earlier one: a session that used one of those goes
        # (the receiver, if it has the new password, logs in again with it).
        self._drop_stale(receiver_id)

    def remove_receiver(self, receiver_id: str) -> None:
        self._drop_stale(receiver_id)

    def _drop_stale(self, receiver_id: str) -> None:
        loop = self._broker._loop
        if loop is None:
            return
        coroutine = self._broker.drop_if_no_longer_valid(receiver_id)
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
            log.error("could not check the session of receiver %s within 10 s", receiver_id)
