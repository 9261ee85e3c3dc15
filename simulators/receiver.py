"""One virtual receiver: power, modem link, MQTT session, sensors, speaking the Loa protocol.

Every payload is built from the pydantic models of :mod:`fleet_service.protocol`.

Life of a receiver (see docs/simulator.md for the full protocol):

1. power on; the modem attaches to the network (a random delay);
2. open TCP, increment the persisted session counter, CONNECT with the Will
   ``offline/<session>/lost`` (retained, QoS 1) on its state topic;
3. after CONNACK, publish the birth ``online/<session>/boot|reconnect`` (retained, QoS 1),
   subscribe to its own ``state`` and ``cmd`` topics, publish the ``boot`` or ``link_lost``
   event (QoS 1), then telemetry (QoS 0) every ``telemetry_interval``;
4. when the connection is lost, reconnect with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from fleet_service.protocol import (
    AmpState,
    DecodeError,
    Event,
    EventKind,
    MessageKind,
    ResetCause,
    State,
    StateMessage,
    StreamState,
    Telemetry,
    decode,
    receiver_topics,
)
from fleet_service.protocol.messages import SESSION_MAX, StateReason, csq_to_dbm
from fleet_service.protocol.topics import TOPIC_ROOT
from simulators import ground_truth as gt
from simulators.ground_truth import GroundTruth
from simulators.link import Link, LinkDown
from simulators.mqtt import (
    AckTimeout,
    ConnectionLost,
    ConnectRefused,
    MqttClient,
    MqttError,
    PingTimeout,
    ProtocolError,
    SubscribeRefused,
    Will,
)

log = logging.getLogger("loa.simulator")

# Largest state or command payload a receiver decodes; the protocol's messages are far smaller.
MAX_PAYLOAD = 4096


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """Settings shared by every receiver of a fleet (one instance, not one per receiver)."""

    host: str
    port: int
    keepalive: int = 60
    telemetry_interval: float = 60.0
    firmware: str = "loa-sim-1.0.0"
    # TCP connect and CONNACK each; also how long a connect attempt lasts while the link is cut.
    connect_timeout: float = 10.0
    # PINGREQ without PINGRESP for this long: the connection is dead (default min(keepalive, 10)).
    response_timeout: float | None = None
    ack_timeout: float = 10.0
    # Reconnect delay: uniform in [0, min(backoff_cap, backoff_base * 2**failures)] ("full
    # jitter"), so that receivers coming back together spread out.
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    # Modem attach time after power-on, uniform in this range.
    attach_delay: tuple[float, float] = (1.0, 5.0)

    def __post_init__(self) -> None:
        if not 0 <= self.keepalive <= 0xFFFF:
            raise ValueError("keepalive must be 0..65535 s")
        if self.telemetry_interval <= 0 or self.backoff_base <= 0 or self.backoff_cap < self.backoff_base:
            raise ValueError("telemetry_interval and backoff_base must be > 0, backoff_cap >= backoff_base")
        if self.attach_delay[0] < 0 or self.attach_delay[1] < self.attach_delay[0]:
            raise ValueError("attach_delay must be (low, high) with 0 <= low <= high")


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    """A snapshot of one receiver, for tests and reports."""

    receiver_id: str
    powered: bool
    link_cut: bool
    online: bool           # has a live MQTT session with its birth sent
    really_up: bool        # the ground truth's current state
    session: int
    connects: int          # CONNECT packets sent
    refused: int           # CONNACKs with an error code
    births: int
    republished_births: int
    commands_received: int
    telemetry_sent: int
    last_error: str | None
    clock_skew: float


class Context:
    """What the receivers of one fleet share."""

    __slots__ = ("config", "rng", "truth")

    def __init__(self, config: ReceiverConfig, rng: random.Random, truth: GroundTruth) -> None:
        self.config = config
        self.rng = rng
        self.truth = truth


def _json(message: StateMessage | Telemetry | Event) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def _loss_cause(reason: BaseException) -> str:
    """A short code for how a connection ended (ground truth cause, link_lost event detail)."""
    if isinstance(reason, PingTimeout):
        return "ping_timeout"
    if isinstance(reason, AckTimeout):
        return "ack_timeout"
    if isinstance(reason, ProtocolError):
        return "protocol_error"
    if isinstance(reason, ConnectionLost):
        cause = reason.__cause__
        if isinstance(cause, MqttError):
            return _loss_cause(cause)
        if cause is not None:
            return "connection_reset"
        return "connection_closed"
    return "connection_lost"


class VirtualReceiver:
    __slots__ = (
        "receiver_id", "_password", "_ctx", "link", "session", "clock_skew", "powered", "_task",
        "_client", "_online", "_born", "_birth_reason", "_birth_off", "_heard_at", "_boot_pending", "_loss_cause", "_boot_at", "_reset_cause",
        "_seq", "_timer", "_csq", "_underruns", "_state_topic", "connects", "refused", "births",
        "republished_births", "commands_received", "telemetry_sent", "last_error",
    )

    def __init__(self, receiver_id: str, password: str, ctx: Context, *, session: int = 0, clock_skew: float = 0.0) -> None:
        topics = receiver_topics(receiver_id)  # validates the id
        self.receiver_id = receiver_id
        self._password = password
        self._ctx = ctx
        self.link = Link()
        #: Session counter, persisted across power loss; incremented before every CONNECT.
        self.session = session
        #: Offset of the receiver's own clock (payload timestamps only), seconds.
        self.clock_skew = clock_skew
        self.powered = False
        self._task: asyncio.Task[None] | None = None
        self._client: MqttClient | None = None
        self._online = False
        self._born = False          # a birth was sent since power-on
        self._birth_reason = StateReason.BOOT  # of the current session's birth
        self._birth_off: float | None = None    # its "off": time without the broker before it
        self._heard_at = 0.0  # loop time the previous connection last heard the broker
        self._boot_pending = False  # the boot event is still to be sent
        self._loss_cause: str | None = None
        self._boot_at = 0.0
        self._reset_cause = ResetCause.POWER_ON
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._csq = 20
        self._underruns = 0
        self._state_topic = topics[MessageKind.STATE]
        self.connects = 0
        self.refused = 0
        self.births = 0
        self.republished_births = 0
        self.commands_received = 0
        self.telemetry_sent = 0
        self.last_error: str | None = None

    # -- topics -----------------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return f"{TOPIC_ROOT}/{self.receiver_id}/{kind}"

    # -- power ------------------------------------------------------------------------------

    def power_on(self, reset_cause: ResetCause = ResetCause.POWER_ON) -> None:
        """Boot: uptime restarts, the next birth says ``boot``, the boot event follows it."""
        if self.powered:
            return
        self.powered = True
        self._boot_at = asyncio.get_running_loop().time()
        self._reset_cause = reset_cause
        self._born = False
        self._boot_pending = True
        self._loss_cause = None
        self._underruns = 0
        self._task = asyncio.get_running_loop().create_task(self._life(), name=f"rx-{self.receiver_id}")

    def power_loss(self, cause: str = gt.POWER_LOSS) -> None:
        """Stop instantly: no shutdown message, no DISCONNECT, no FIN. The open connection
        stays silent until the broker drops it (keepalive expiry, then the Will)."""
        if not self.powered:
            return
        self.powered = False
        self._mark_down(cause)
        self.link.freeze()
        self._drop_session(halt=True)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def shutdown(self, *, timeout: float | None = None) -> None:
        """Planned stop: ``offline/<session>/shutdown`` (retained, QoS 1), DISCONNECT, off."""
        if not self.powered:
            return
        self.powered = False
        self._mark_down(gt.SHUTDOWN)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        client, online = self._client, self._online
        self._drop_session(halt=False, close=False)
        if client is None:
            return
        if online and client.connected:
            goodbye = StateMessage(state=State.OFFLINE, session=self.session, reason=StateReason.SHUTDOWN)
            try:
                await client.publish(
                    self._state_topic, _json(goodbye), qos=1, retain=True,
                    timeout=self._ctx.config.ack_timeout if timeout is None else timeout,
                )
            except MqttError as exc:
                log.info("%s: shutdown message not acknowledged: %s", self.receiver_id, exc)
            client.disconnect()
        else:
            client.close()

    def abort(self) -> None:
        """End of a simulation without goodbye: stop and reset every socket."""
        self.power_loss(gt.STOPPED)
        self.link.close_all()

    # -- link -------------------------------------------------------------------------------

    def cut_link(self) -> None:
        if self.link.is_cut:
            return
        self._mark_down(gt.LINK_CUT)
        client = self._client
        if client is not None:
            client.probe_cancel()
        self.link.cut()

    def restore_link(self) -> None:
        if not self.link.is_cut:
            return
        restored_at = time.time()
        self.link.restore()
        client = self._client
        if self.powered and self._online and client is not None and client.connected:
            # The session may have survived: up again from the restore, once the broker
            # proves it still holds the connection.
            client.probe(lambda: self._confirm_restore(client, restored_at))

    def _confirm_restore(self, client: MqttClient, restored_at: float) -> None:
        if client is self._client and self._online and not self.link.is_cut:
            self._mark_up(gt.LINK_RESTORED, restored_at)

    # -- ground truth -----------------------------------------------------------------------

    def _mark_up(self, cause: str, at: float | None = None) -> None:
        self._ctx.truth.record(self.receiver_id, True, cause, time.time() if at is None else at)

    def _mark_down(self, cause: str) -> None:
        self._ctx.truth.record(self.receiver_id, False, cause, time.time())

    # -- the connection loop ----------------------------------------------------------------

    async def _life(self) -> None:
        config = self._ctx.config
        rng = self._ctx.rng
        await asyncio.sleep(rng.uniform(*config.attach_delay))
        failures = 0
        while self._owns_life():
            client: MqttClient | None = None
            try:
                client = await self._establish()
            except (OSError, MqttError) as exc:  # LinkDown is an OSError
                if not self._owns_life():
                    return  # powered off meanwhile: the error is a consequence of that
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                level = logging.WARNING if not isinstance(exc, (LinkDown, ConnectionRefusedError)) else logging.DEBUG
                log.log(level, "%s: connection attempt failed: %s", self.receiver_id, self.last_error)
            except Exception as exc:  # a bug must not silently kill one receiver of thousands
                if not self._owns_life():
                    return
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("%s: unexpected error; retrying", self.receiver_id)
            if client is not None:
                failures = 0
                await client.closed  # the session runs on callbacks and timers meanwhile
                client = None
            ceiling = min(config.backoff_cap, config.backoff_base * 2 ** min(failures, 32))
            await asyncio.sleep(rng.uniform(0.0, ceiling))

    def _owns_life(self) -> bool:
        """Whether the running task is this receiver's current life. Python 3.11's wait_for
        can swallow a cancellation when the awaited result is ready at the same moment, so the
        task of a receiver that was powered off checks this rather than trust the cancel."""
        return self._task is not None and self._task is asyncio.current_task()

    async def _establish(self) -> MqttClient:
        """Open one MQTT session: TCP, CONNECT, birth, subscriptions, event, first telemetry.
        Returns the client once the session is established; raises if it could not be.
        (Its locals die with it: a receiver keeps only what it needs while connected.)"""
        config = self._ctx.config
        conn = await self.link.open(config.host, config.port, timeout=config.connect_timeout)
        if not self._owns_life():
            conn.close()
            raise asyncio.CancelledError
        self.session = self.session % SESSION_MAX + 1
        session = self.session
        will = Will(self._state_topic, _json(StateMessage(state=State.OFFLINE, session=session, reason=StateReason.LOST)))
        client = MqttClient(
            conn,
            client_id=self.receiver_id,
            username=self.receiver_id,
            password=self._password,
            keepalive=config.keepalive,
            response_timeout=config.response_timeout,
            will=will,
            handler=self,
        )
        self._client = client
        self.connects += 1
        try:
            try:
                await client.connect(timeout=config.connect_timeout)
            except ConnectRefused:
                self.refused += 1
                raise
            if self._born:
                self._birth_reason = StateReason.RECONNECT
                self._birth_off = round(max(0.0, asyncio.get_running_loop().time() - self._heard_at), 1)
            else:
                self._birth_reason = StateReason.BOOT
                self._birth_off = None
            ack = self._publish_birth(client)
            self._seq = 0
            self._born = True
            self.births += 1
            if not self.link.is_cut:
                self._mark_up(gt.CONNECTED)
            await self._await_ack(client, ack)
            try:
                await client.subscribe(
                    [(self._state_topic, 1), (self._topic("cmd"), 1)], timeout=config.ack_timeout
                )
            except SubscribeRefused as exc:  # provisioning problem; keep reporting anyway
                self.last_error = str(exc)
                log.error("%s: %s", self.receiver_id, exc)
            if self._boot_pending:
                event = Event(session=session, sent_at=self._clock(), kind=EventKind.BOOT, detail=self._reset_cause.value)
            else:
                event = Event(session=session, sent_at=self._clock(), kind=EventKind.LINK_LOST, detail=self._loss_cause)
            await client.publish(self._topic("event"), _json(event), qos=1, timeout=config.ack_timeout)
            if not self._owns_life():
                raise asyncio.CancelledError
            self._boot_pending = False
            self.last_error = None
            self._telemetry()
        except BaseException as exc:
            if self._client is client:
                client.close(exc if isinstance(exc, MqttError) else None)
            raise
        return client

    def _publish_birth(self, client: MqttClient) -> asyncio.Future[bytes] | None:
        birth = StateMessage(
            state=State.ONLINE, session=self.session, reason=self._birth_reason,
            firmware=self._ctx.config.firmware, offline_s=self._birth_off,
        )
        ack = client.publish_nowait(self._state_topic, _json(birth), qos=1, retain=True)
        self._online = True
        return ack

    async def _await_ack(self, client: MqttClient, ack: asyncio.Future[bytes] | None) -> None:
        if ack is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(ack), self._ctx.config.ack_timeout)
        except TimeoutError:
            raise AckTimeout(f"no PUBACK for the birth within {self._ctx.config.ack_timeout:g}s") from None

    def mqtt_lost(self, reason: BaseException) -> None:
        client = self._client
        if client is None:
            return  # a connection this receiver already let go of
        if self._online:
            self._heard_at = client.last_received
        cause = _loss_cause(reason)
        if self._online:
            self._loss_cause = cause
        self._mark_down(cause)
        self._online = False
        self._client = None
        self._stop_telemetry()

    def _drop_session(self, *, halt: bool, close: bool = True) -> None:
        client, self._client = self._client, None
        self._online = False
        self._stop_telemetry()
        if client is not None:
            if halt:
                client.halt()
            elif close:
                client.close()

    # -- incoming messages ------------------------------------------------------------------

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self._state_topic:
            try:
                message = decode(topic, payload, max_bytes=MAX_PAYLOAD).message
            except DecodeError as exc:
                log.warning("%s: ignoring state message: %s", self.receiver_id, exc)
                return
            client = self._client
            if (
                isinstance(message, StateMessage)
                and message.state is State.OFFLINE
                and self._online
                and client is not None
                and client.connected
            ):
                # A Will (or goodbye) from another session would leave a wrong retained state
                # while this one is alive: put the birth back.
                log.info(
                    "%s: retained state says offline (session %d, reason %s) while session %d is online; "
                    "re-publishing the birth", self.receiver_id, message.session, message.reason, self.session,
                )
                ack = self._publish_birth(client)
                self.republished_births += 1
                if ack is not None:
                    ack.add_done_callback(_consume)
        elif topic == self._topic("cmd"):
            self.commands_received += 1

    # -- telemetry --------------------------------------------------------------------------

    def _clock(self) -> int:
        return max(0, int(time.time() + self.clock_skew))

    def _telemetry(self) -> None:
        """Send one report now and schedule the next (while the session lasts)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        client = self._client
        if client is None or not client.connected or not self._online:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._ctx.config.telemetry_interval, self._telemetry)
        rng = self._ctx.rng
        self._csq = min(31, max(5, self._csq + rng.choice((-1, 0, 0, 1))))
        if rng.random() < 0.02:
            self._underruns += 1
        report = Telemetry(
            session=self.session,
            seq=self._seq,
            sent_at=self._clock(),
            uptime_s=int(loop.time() - self._boot_at),
            signal_dbm=csq_to_dbm(self._csq),
            signal_csq=self._csq,
            temperature_c=round(rng.uniform(32.0, 52.0), 1),
            supply_v=round(rng.uniform(11.8, 12.4), 2),
            amplifier=AmpState.ON,
            stream=StreamState.PLAYING,
            bitrate_kbps=64,
            underruns=self._underruns,
            free_memory=rng.randrange(80_000, 120_000, 16),
            reset_cause=self._reset_cause,
            firmware=self._ctx.config.firmware,
        )
        self._seq += 1
        self.telemetry_sent += 1
        client.publish_nowait(self._topic("telemetry"), _json(report))

    def _stop_telemetry(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- status -----------------------------------------------------------------------------

    def status(self) -> ReceiverStatus:
        return ReceiverStatus(
            receiver_id=self.receiver_id,
            powered=self.powered,
            link_cut=self.link.is_cut,
            online=self._online,
            really_up=self._ctx.truth.is_up(self.receiver_id),
            session=self.session,
            connects=self.connects,
            refused=self.refused,
            births=self.births,
            republished_births=self.republished_births,
            commands_received=self.commands_received,
            telemetry_sent=self.telemetry_sent,
            last_error=self.last_error,
            clock_skew=self.clock_skew,
        )


def _consume(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()
