"""One virtual receiver: power, modem link, MQTT session, sensors, speaking the Loa protocol.

Every payload is built from the pydantic models of :mod:`fleet_service.protocol`.

Life of a receiver (see docs/simulator.md for the full protocol):

1. power on; the modem attaches to the network (a random delay);
2. open TCP, increment the persisted session counter, CONNECT with the Will
   ``offline/<session>/lost`` (retained, QoS 1) on its state topic;
3. after CONNACK, publish the birth ``online/<session>/boot|reconnect`` (retained, QoS 1),
   subscribe to its own ``state`` and ``cmd`` topics, publish the ``boot`` or ``link_lost``
   event (QoS 1), the events queued while offline, the play status (retained, QoS 1), then
   telemetry (QoS 0) every ``telemetry_interval``;
4. when the connection is lost, reconnect with jittered exponential backoff.

Beside the session it runs the application of protocol 1.1: commands and their
acknowledgements (never twice, priorities, expiry), the stream player, the broadcast schedule
by its own clock, and the clock sync; and the firmware updates of 1.2 (download, checks,
install, trial run and confirmation or rollback; :mod:`simulators.update`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import httpx
from pydantic import BaseModel

from fleet_service.protocol import (
    Ack,
    AckReason,
    AckStatus,
    AmpState,
    CommandError,
    ConfigCommand,
    DecodeError,
    Event,
    EventKind,
    MessageKind,
    PlayCommand,
    PlayReason,
    PlaySource,
    PlayStatus,
    Priority,
    RebootCommand,
    ResetCause,
    ScheduleCommand,
    State,
    StateMessage,
    StopCommand,
    StreamState,
    Telemetry,
    VolumeCommand,
    decode,
    decode_command,
    receiver_topics,
)
from fleet_service.protocol.messages import (
    RECEIVER_REMEMBERS_COMMANDS,
    SESSION_MAX,
    StateReason,
    UpdateCommand,
    UpdateState,
    UpdateStatus,
    csq_to_dbm,
)
from fleet_service.protocol.topics import TOPIC_ROOT
from simulators import ground_truth as gt
from simulators import schedule as sched
from simulators import update as upd
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

# Largest state payload a receiver decodes; the protocol's messages are far smaller.
MAX_PAYLOAD = 4096
# Events kept while there is no connection (docs/protocol.md): the oldest go first.
OFFLINE_EVENTS = 16
# Volume of a factory-new receiver.
DEFAULT_VOLUME = 80
# Re-sync the clock this often while connected (and after every link-up).
CLOCK_RESYNC_S = 6 * 3600
# A clock corrected by more than this is worth a clock_sync event.
CLOCK_EVENT_MS = 1000
# Without fetching, a stream "opens" after this long (a 4G GET's first bytes).
SIMULATED_OPEN_S = 0.2
# A slot timer fires this long after the boundary, so the clock reads past it.
BOUNDARY_MARGIN_S = 0.005
# Power stays off this long in a reboot the receiver was commanded to do.
REBOOT_OFF_S = 0.5
# A command still being carried out when the power went: its outcome after the boot.
INTERRUPTED = AckReason.INTERRUPTED.value
# Largest clock skew telemetry can carry (int32 milliseconds).
_SKEW_MS_MAX = 2**31 - 1
# Board readings set by fault injection (Fleet.set_readings) raise the board events with the
# firmware's thresholds and hysteresis (firmware/loa/app.py, checked equal by the tests): once
# per crossing, armed again only past the second threshold. The 12 V input, in volts:
LOW_SUPPLY_V = 11.0
SUPPLY_OK_V = 11.5
# The chip's die, in degrees C:
OVERHEAT_C = 85.0
COOL_C = 80.0
# The amplifier must read the same this long for amp_fault / amp_recovered (the firmware's
# 8 checks 250 ms apart: the current sense settles after the relay closes).
AMP_SETTLE_S = 2.0


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    """Settings shared by every receiver of a fleet (one instance, not one per receiver)."""

    host: str
    port: int
    keepalive: int = 300  # the firmware's defaults
    telemetry_interval: float = 300.0
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
    # Really fetch the stream of a play (an HTTP GET per playing receiver), or only simulate
    # it at ``stream_kbps`` (large fleets). See docs/simulator.md.
    fetch_streams: bool = True
    stream_kbps: int = 64
    # -- firmware updates (protocol 1.2) --
    # The board's hardware family (births' "hw"): which releases it takes.
    hardware: str = "esp32-a7670"
    # The release signing public keys built into the firmware (raw 32-byte Ed25519 keys): the
    # fleet's, as LOA_FIRMWARE_KEYS gives them to the service. Empty: every update fails its
    # signature check.
    update_keys: tuple[bytes, ...] = ()
    # A download's attempts in a row that may fail before the update fails, and the first pause
    # between them (doubling, at most a minute).
    update_retries: int = 6
    update_retry_base: float = 2.0
    # HTTP connect and read timeout of a download.
    update_timeout: float = 20.0
    # How long a new version on trial has to connect and confirm itself before the board goes
    # back to the old one.
    update_trial_s: float = 300.0

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
    clock_synced: bool
    playing: str | None      # "cmd:<id>" or "sched:<slot>" while a stream plays
    volume: int
    schedule_version: int | None
    acks_sent: int
    events_queued: int       # events not yet acknowledged by the broker
    firmware: str = ""       # the version running ("": not known from outside)
    update: str | None = None  # the latest update's state (protocol 1.2), if there was one
    update_fetched: int = 0  # its bytes fetched


class Context:
    """What the receivers of one fleet share."""

    __slots__ = ("config", "rng", "truth", "_http", "_downloads")

    def __init__(self, config: ReceiverConfig, rng: random.Random, truth: GroundTruth) -> None:
        self.config = config
        self.rng = rng
        self.truth = truth
        self._http: httpx.AsyncClient | None = None
        self._downloads: httpx.AsyncClient | None = None

    def downloads(self) -> httpx.AsyncClient:
        """The fleet's HTTP client for firmware downloads (no redirects: a receiver's login
        goes to the URL it was given only)."""
        if self._downloads is None:
            self._downloads = httpx.AsyncClient(
                trust_env=False, timeout=httpx.Timeout(self.config.update_timeout),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            )
        return self._downloads

    def http(self) -> httpx.AsyncClient:
        """The fleet's HTTP client for streams (created on first use, in the running loop)."""
        if self._http is None:
            from simulators.stream import STREAM_OPEN_TIMEOUT_S, STREAM_READ_TIMEOUT_S

            self._http = httpx.AsyncClient(
                follow_redirects=True, trust_env=False,
                timeout=httpx.Timeout(STREAM_OPEN_TIMEOUT_S, read=STREAM_READ_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
            )
        return self._http

    async def aclose(self) -> None:
        client, self._http = self._http, None
        if client is not None:
            await client.aclose()
        downloads, self._downloads = self._downloads, None
        if downloads is not None:
            await downloads.aclose()


class Readings:
    """A receiver's board readings as fault injection set them (None: the usual random
    values), and the board events raised on them and not yet cleared. Made on the first
    injection only: most receivers of a large fleet never need one."""

    __slots__ = ("supply_v", "temperature_c", "amp_fault", "alarms", "amp_seen", "amp_timer")

    def __init__(self) -> None:
        self.supply_v: float | None = None
        self.temperature_c: float | None = None
        self.amp_fault = False          # the amplifier draws no current when switched on
        self.alarms: set[EventKind] = set()
        self.amp_seen = AmpState.OFF    # the amplifier's state the settle timer runs for
        self.amp_timer: asyncio.TimerHandle | None = None

    def reset(self) -> None:
        """Power goes: what was raised is forgotten with the RAM."""
        self.alarms.clear()
        self.amp_seen = AmpState.OFF
        if self.amp_timer is not None:
            self.amp_timer.cancel()
            self.amp_timer = None


def _json(message: BaseModel) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


class Playback:
    """What the player is playing (or opening) now."""

    __slots__ = ("source", "ref", "priority", "url", "volume", "occurrence", "command_id", "duration",
                 "playing", "kbps", "started", "task", "timer")

    def __init__(self, source: PlaySource, ref: str, priority: Priority, url: str, *, volume: int | None = None,
                 occurrence: str | None = None, command_id: str | None = None, duration: int | None = None) -> None:
        self.source = source
        self.ref = ref
        self.priority = priority
        self.url = url
        self.volume = volume            # a slot's own volume, while it plays
        self.occurrence = occurrence    # a slot's "id@date"
        self.command_id = command_id    # the play command to acknowledge "done"
        self.duration = duration
        self.playing = False            # False while the stream is being opened
        self.kbps: int | None = None
        self.started = 0.0              # loop time the first audio arrived
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    @property
    def label(self) -> str:
        return f"{self.source.value}:{self.ref}"

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = None


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
        "_client", "_online", "_born", "_reported", "_birth_reason", "_birth_off", "_heard_at", "_boot_pending", "_loss_cause", "_boot_at", "_reset_cause",
        "_seq", "_timer", "_csq", "_underruns", "_state_topic", "connects", "refused", "births",
        "republished_births", "commands_received", "telemetry_sent", "last_error",
        # persisted ("flash"), beside the session counter
        "_outcomes", "schedule", "volume", "_settings",
        # clock
        "clock_sync", "_offset", "_synced_at", "_skew_ms",
        # player, schedule runner, events
        "_play", "_player", "_why", "_stream_bytes", "_slot_seen", "_slot_timer", "_events", "_epoch",
        "_reboot_task", "acks_sent", "_interval", "_readings",
        # firmware updates: the version running (None: the fleet's), the update kept in flash,
        # faults for the next one
        "_fw", "_update", "_update_faults",
    )

    def __init__(self, receiver_id: str, password: str, ctx: Context, *, session: int = 0, clock_skew: float = 0.0,
                 clock_sync: bool = True) -> None:
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
        self._reported: asyncio.Event | None = None  # set once a report is out since power-on
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
        #: Ids and final outcomes of the last commands (kept across power loss, like flash).
        self._outcomes: OrderedDict[str, tuple[AckStatus, str | None]] | None = None
        #: The broadcast schedule held (kept across power loss).
        self.schedule: ScheduleCommand | None = None
        self.volume = DEFAULT_VOLUME
        self._settings: dict[str, object] | None = None  # from config commands
        #: Whether the clock may sync at all (a scenario can keep a receiver unsynced).
        self.clock_sync = clock_sync
        self._offset = clock_skew           # the clock's error now, seconds
        self._synced_at: float | None = None  # loop time of the last sync since power-on
        self._skew_ms: int | None = None      # measured then
        self._play: Playback | None = None
        self._player = StreamState.IDLE
        self._why = PlayReason.BOOT
        self._stream_bytes = 0
        self._slot_seen: str | None = None  # occurrence of the slot last started (or passed over)
        self._slot_timer: asyncio.TimerHandle | None = None
        self._events: deque[list[object]] | None = None  # [kind, detail, ts, in flight] not yet acknowledged
        self._epoch = 0  # counts power changes, so a delayed boot knows it is stale
        self._reboot_task: asyncio.Task[None] | None = None
        self.acks_sent = 0
        self._interval = ctx.config.telemetry_interval  # of this session (settings apply per connection)
        self._readings: Readings | None = None
        self._fw: str | None = None
        self._update: upd.Job | None = None
        self._update_faults: upd.UpdateFaults | None = None

    # -- topics -----------------------------------------------------------------------------

    def _topic(self, kind: str) -> str:
        return f"{TOPIC_ROOT}/{self.receiver_id}/{kind}"

    # -- power ------------------------------------------------------------------------------

    def power_on(self, reset_cause: ResetCause = ResetCause.POWER_ON) -> None:
        """Boot: uptime restarts, the next birth says ``boot``, the boot event follows it."""
        if self.powered:
            return
        self.powered = True
        self._epoch += 1
        self._boot_at = asyncio.get_running_loop().time()
        self._reset_cause = reset_cause
        self._born = False
        self._reported = asyncio.Event()
        self._boot_pending = True
        self._loss_cause = None
        self._underruns = 0
        # RAM is gone: the clock runs from its hardware error again, unsynced; nothing plays.
        self._offset = self.clock_skew
        self._synced_at = self._skew_ms = None
        self._player, self._why, self._stream_bytes, self._slot_seen = StreamState.IDLE, PlayReason.BOOT, 0, None
        self._events = None
        self._check_board()  # what the readings say is raised again, queued for the first birth
        job = self._update
        going_on = self._boot_update()  # an update goes on across a reset (kept in flash)
        if self._outcomes:
            for cid, (status, _) in self._outcomes.items():
                if status is AckStatus.ACCEPTED and cid != going_on:  # cut short: never carried out
                    self._outcomes[cid] = (AckStatus.FAILED, INTERRUPTED)
        if job is not None and job.trial and job.faults is not None and job.faults.never_confirm:
            return  # the new version never gets a connection up: its trial time runs out
        self._task = asyncio.get_running_loop().create_task(self._life(), name=f"rx-{self.receiver_id}")

    def power_loss(self, cause: str = gt.POWER_LOSS) -> None:
        """Stop instantly: no shutdown message, no DISCONNECT, no FIN. The open connection
        stays silent until the broker drops it (keepalive expiry, then the Will)."""
        if not self.powered:
            return
        self.powered = False
        self._epoch += 1
        self._halt_application(cause)
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
        self._epoch += 1
        self._halt_application(gt.SHUTDOWN)
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
        task, self._reboot_task = self._reboot_task, None
        if task is not None:
            task.cancel()
        if self._update is not None:
            self._update.stop()
        self._epoch += 1  # a boot still due (after an update's reboot or power loss) is stale

    def _halt_application(self, why: str) -> None:
        """Power goes: the player and the schedule stop where they are (no events)."""
        play, self._play = self._play, None
        if play is not None:
            play.cancel()
            if play.playing:
                self._ctx.truth.play_ended(self.receiver_id, time.time(), why)
        if self._slot_timer is not None:
            self._slot_timer.cancel()
            self._slot_timer = None
        if self._readings is not None:
            self._readings.reset()
        if self._update is not None:
            self._update.stop()

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
        self._sync_clock()  # the link is up: sync against the reference first
        self.session = self.session % SESSION_MAX + 1
        session = self.session
        will = Will(self._state_topic, _json(StateMessage(state=State.OFFLINE, session=session, reason=StateReason.LOST)))
        client = MqttClient(
            conn,
            client_id=self.receiver_id,
            username=self.receiver_id,
            password=self._password,
            keepalive=int(self._setting("keepalive", config.keepalive)),
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
            for entry in self._events or ():  # what happened while offline, with its own time
                self._send_event(client, entry)
            self._publish_play()
            self._report_update()
            self._interval = self._setting("telemetry_interval", config.telemetry_interval)
            self._telemetry()
            if self._reported is not None:
                self._reported.set()
            self._confirm_update()  # a new version on trial: birth and first report are out
        except BaseException as exc:
            if self._client is client:
                client.close(exc if isinstance(exc, MqttError) else None)
            raise
        return client

    def _publish_birth(self, client: MqttClient) -> asyncio.Future[bytes] | None:
        birth = StateMessage(
            state=State.ONLINE, session=self.session, reason=self._birth_reason,
            firmware=self._firmware(), hardware=self._ctx.config.hardware, offline_s=self._birth_off,
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
            self._command(payload)

    # -- telemetry --------------------------------------------------------------------------

    def _clock(self) -> int:
        return max(0, int(time.time() + self._offset))

    def _setting(self, name: str, default: float) -> float:
        value = self._settings.get(name) if self._settings else None
        return default if value is None else float(value)  # type: ignore[arg-type]

    def _telemetry(self) -> None:
        """Send one report now and schedule the next (while the session lasts)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        client = self._client
        if client is None or not client.connected or not self._online:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._interval, self._telemetry)
        if self._synced_at is not None and loop.time() - self._synced_at >= CLOCK_RESYNC_S:
            self._sync_clock()
        rng = self._ctx.rng
        self._csq = min(31, max(5, self._csq + rng.choice((-1, 0, 0, 1))))
        if rng.random() < 0.02:
            self._underruns += 1
        readings = self._readings
        supply = readings.supply_v if readings is not None else None
        temperature = readings.temperature_c if readings is not None else None
        report = Telemetry(
            session=self.session,
            seq=self._seq,
            sent_at=self._clock(),
            uptime_s=int(loop.time() - self._boot_at),
            signal_dbm=csq_to_dbm(self._csq),
            signal_csq=self._csq,
            temperature_c=round(rng.uniform(32.0, 52.0), 1) if temperature is None else temperature,
            supply_v=round(rng.uniform(11.8, 12.4), 2) if supply is None else supply,
            amplifier=self._amp_state(),
            stream=self._player,
            bitrate_kbps=self._play.kbps if self._play is not None and self._play.playing else None,
            underruns=self._underruns,
            free_memory=rng.randrange(80_000, 120_000, 16),
            reset_cause=self._reset_cause,
            firmware=self._firmware(),
            stream_bytes=self._bytes_received(),
            volume=self._output_volume(),
            schedule_version=self.schedule.schedule_version if self.schedule is not None else None,
            clock_skew_ms=self._skew_ms,
            clock_synced_s=None if self._synced_at is None else int(loop.time() - self._synced_at),
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
            clock_synced=self._synced_at is not None,
            playing=self._play.label if self._play is not None and self._play.playing else None,
            volume=self._output_volume(),
            schedule_version=self.schedule.schedule_version if self.schedule is not None else None,
            acks_sent=self.acks_sent,
            events_queued=len(self._events or ()),
            firmware=self._firmware(),
            update=self._update.state.value if self._update is not None else None,
            update_fetched=self._update.got if self._update is not None else 0,
        )

    def set_clock(self, skew: float) -> None:
        """The clock's error becomes ``skew`` now, and again after every power-on (its RTC)."""
        self.clock_skew = self._offset = skew
        self._arm_schedule()

    # -- clock ------------------------------------------------------------------------------

    def _sync_clock(self) -> None:
        """Sync against the reference (the host clock stands in for SNTP): measure the error,
        correct it, say so if it was more than a second."""
        if not self.clock_sync:
            return
        skew_ms = max(-_SKEW_MS_MAX, min(_SKEW_MS_MAX, round(self._offset * 1000)))
        self._offset = 0.0
        self._skew_ms = skew_ms
        self._synced_at = asyncio.get_running_loop().time()
        if abs(skew_ms) > CLOCK_EVENT_MS:
            self._event(EventKind.CLOCK_SYNC, f"ntp:{skew_ms}")
        self._arm_schedule()

    # -- events -----------------------------------------------------------------------------

    def _event(self, kind: EventKind, detail: str | None) -> None:
        """An event now: published at once when online, else queued for the next birth. It
        stays queued until the broker acknowledges it, so a connection that dies first does
        not lose it."""
        events = self._events
        if events is None:
            events = self._events = deque(maxlen=OFFLINE_EVENTS)
        entry: list[object] = [kind, detail, self._clock(), False]
        events.append(entry)
        client = self._client
        if self._online and client is not None and client.connected:
            self._send_event(client, entry)

    def _send_event(self, client: MqttClient, entry: list[object]) -> None:
        kind, detail, ts, in_flight = entry
        if in_flight:
            return
        event = Event(session=self.session, sent_at=ts, kind=kind, detail=detail)  # type: ignore[arg-type]
        try:
            ack = client.publish_nowait(self._topic("event"), _json(event), qos=1)
        except MqttError as exc:
            log.info("%s: event kept for later: %s", self.receiver_id, exc)
            return
        if ack is not None:
            entry[3] = True
            ack.add_done_callback(lambda f: self._event_acknowledged(f, entry))

    def _event_acknowledged(self, future: asyncio.Future[bytes], entry: list[object]) -> None:
        if future.cancelled() or future.exception() is not None:
            entry[3] = False
            return  # stays queued: sent again after the next birth
        events = self._events
        if events is not None:
            try:
                events.remove(entry)
            except ValueError:
                pass
            if not events:
                self._events = None

    # -- board readings ---------------------------------------------------------------------

    def set_readings(self, *, supply_v: float | None = None, temperature_c: float | None = None,
                     amp_fault: bool | None = None) -> None:
        """Set the board's readings from now on (None: leave as it is), across power loss as
        the hardware's condition is: the supply voltage, the die temperature, whether the
        amplifier draws no current when switched on. The board events follow."""
        readings = self._readings
        if readings is None:
            readings = self._readings = Readings()
        if supply_v is not None:
            readings.supply_v = supply_v
        if temperature_c is not None:
            readings.temperature_c = temperature_c
        if amp_fault is not None:
            readings.amp_fault = amp_fault
        if self.powered:
            self._check_board()

    def _amp_state(self) -> AmpState:
        """``off`` unless playing (the relay follows the player), ``fault`` if it then draws
        no current."""
        if self._player is not StreamState.PLAYING:
            return AmpState.OFF
        readings = self._readings
        return AmpState.FAULT if readings is not None and readings.amp_fault else AmpState.ON

    def _alarm(self, kind: EventKind, bad: bool, good: bool) -> bool:
        """Raise ``kind`` once when ``bad``; True when ``good`` clears it."""
        alarms = self._readings.alarms  # type: ignore[union-attr]
        if bad and kind not in alarms:
            alarms.add(kind)
            self._event(kind, None)
        elif good and kind in alarms:
            alarms.discard(kind)
            return True
        return False

    def _check_board(self) -> None:
        """The readings against their thresholds (when they or the amplifier's relay change)."""
        readings = self._readings
        if readings is None or not self.powered:
            return
        if readings.supply_v is not None:
            self._alarm(EventKind.LOW_SUPPLY, readings.supply_v < LOW_SUPPLY_V, readings.supply_v > SUPPLY_OK_V)
        if readings.temperature_c is not None:
            self._alarm(EventKind.OVERHEAT, readings.temperature_c > OVERHEAT_C, readings.temperature_c < COOL_C)
        amp = self._amp_state()
        if amp is not readings.amp_seen:
            readings.amp_seen = amp
            if readings.amp_timer is not None:
                readings.amp_timer.cancel()
            readings.amp_timer = asyncio.get_running_loop().call_later(AMP_SETTLE_S, self._amp_settled, amp)

    def _amp_settled(self, amp: AmpState) -> None:
        """The amplifier has read ``amp`` for AMP_SETTLE_S."""
        readings = self._readings
        if readings is None or readings.amp_seen is not amp:
            return
        readings.amp_timer = None
        if self._alarm(EventKind.AMP_FAULT, amp is AmpState.FAULT, amp is AmpState.ON):
            self._event(EventKind.AMP_RECOVERED, None)

    # -- commands ---------------------------------------------------------------------------

    def _command(self, payload: bytes) -> None:
        try:
            command = decode_command(payload)
        except CommandError as exc:
            if exc.command_id is None:
                self._event(EventKind.BAD_COMMAND, exc.reason.value)
            elif not self._answer_duplicate(exc.command_id):
                self._final(exc.command_id, AckStatus.REJECTED, exc.reason.value)
            return
        cid = command.command_id
        if self._answer_duplicate(cid):
            return
        if self._synced_at is not None and self._clock() > command.expires_at:
            self._final(cid, AckStatus.EXPIRED, AckReason.EXPIRED.value)
            return
        if isinstance(command, PlayCommand):
            playing = self._play
            if playing is not None and command.priority.rank < playing.priority.rank:
                self._final(cid, AckStatus.REJECTED, AckReason.LOWER_PRIORITY.value)
                return
            self._remember(cid, AckStatus.ACCEPTED, None)
            self._ack(cid, AckStatus.ACCEPTED, None)
            self._start(Playback(PlaySource.COMMAND, cid, command.priority, command.url, command_id=cid,
                                 duration=command.duration_s), PlayReason.COMMAND)
        elif isinstance(command, StopCommand):
            playing = self._play
            if playing is None:
                self._final(cid, AckStatus.DONE, AckReason.NOTHING_PLAYING.value)
            elif command.priority.rank < playing.priority.rank:
                self._final(cid, AckStatus.REJECTED, AckReason.LOWER_PRIORITY.value)
            else:
                self._end(PlayReason.STOPPED)
                self._final(cid, AckStatus.DONE, None)
        elif isinstance(command, VolumeCommand):
            self.volume = command.volume
            self._final(cid, AckStatus.DONE, None)
            self._publish_play()
        elif isinstance(command, ConfigCommand):
            self._settings = {**(self._settings or {}), **command.settings.model_dump(exclude_none=True)}
            self._final(cid, AckStatus.DONE, None)  # takes effect at the next connection
        elif isinstance(command, ScheduleCommand):
            self.schedule = command
            self._final(cid, AckStatus.DONE, None)
            self._publish_play()
            self._arm_schedule()
        elif isinstance(command, RebootCommand):
            self._final(cid, AckStatus.DONE, None)  # just before the goodbye
            if self._reboot_task is None:
                self._reboot_task = asyncio.get_running_loop().create_task(self._reboot())
        elif isinstance(command, UpdateCommand):
            self._update_command(command)

    def _answer_duplicate(self, cid: str) -> bool:
        known = self._outcomes.get(cid) if self._outcomes else None
        if known is None:
            return False
        self._ack(cid, known[0], known[1], duplicate=True)
        return True

    def _remember(self, cid: str, status: AckStatus, why: str | None) -> None:
        outcomes = self._outcomes
        if outcomes is None:
            outcomes = self._outcomes = OrderedDict()
        outcomes[cid] = (status, why)
        outcomes.move_to_end(cid)
        while len(outcomes) > RECEIVER_REMEMBERS_COMMANDS:
            outcomes.popitem(last=False)

    def _final(self, cid: str, status: AckStatus, why: str | None) -> None:
        self._remember(cid, status, why)
        self._ack(cid, status, why)

    def _ack(self, cid: str, status: AckStatus, why: str | None, *, duplicate: bool = False) -> None:
        """Acknowledge (QoS 1). Lost if the connection is down: the service delivers the
        command again after the next birth, and the stored outcome answers it."""
        client = self._client
        if not (self._online and client is not None and client.connected):
            return
        ack = Ack(session=self.session, command_id=cid, status=status, reason=why, sent_at=self._clock(),
                  duplicate=duplicate)
        try:
            future = client.publish_nowait(self._topic("ack"), _json(ack), qos=1)
        except MqttError as exc:
            log.info("%s: acknowledgement of %s not sent: %s", self.receiver_id, cid, exc)
            return
        self.acks_sent += 1
        if future is not None:
            future.add_done_callback(_consume)

    async def _reboot(self) -> None:
        try:
            await asyncio.sleep(0)  # let the acknowledgement go first
            await self.shutdown()
            epoch = self._epoch
            await asyncio.sleep(REBOOT_OFF_S)
            if not self.powered and self._epoch == epoch:
                self.power_on(ResetCause.SOFT)
        finally:
            self._reboot_task = None

    # -- firmware updates (protocol 1.2) -----------------------------------------------------

    def _firmware(self) -> str:
        """The version running: the new one while it runs on trial, else the active slot's."""
        job = self._update
        if job is not None and job.trial:
            return job.firmware
        return self._fw or self._ctx.config.firmware

    def set_update_faults(self, faults: upd.UpdateFaults | None) -> None:
        """Faults for the next update this receiver accepts (None: none)."""
        self._update_faults = faults

    def _update_command(self, command: UpdateCommand) -> None:
        """Step 1: the checks, ``accepted``, ``offered``; the rest runs in a task of its own
        while the update lasts."""
        cid = command.command_id
        config = self._ctx.config
        if command.hardware != config.hardware:
            self._final(cid, AckStatus.REJECTED, AckReason.WRONG_HARDWARE.value)
            return
        running = upd.running_version(self._firmware())
        if upd.running_version(command.release_version) < running and not command.allow_downgrade:
            self._final(cid, AckStatus.REJECTED, AckReason.DOWNGRADE.value)
            return
        if self._update is not None and self._update.under_way:
            self._final(cid, AckStatus.REJECTED, AckReason.UPDATE_BUSY.value)
            return
        faults, self._update_faults = self._update_faults, None
        job = self._update = upd.Job(cid, command.release_id, command.release_version,
                                     upd.firmware_named(self._firmware(), command.release_version), command.url,
                                     command.jitter_s, faults)
        self._remember(cid, AckStatus.ACCEPTED, None)
        self._ack(cid, AckStatus.ACCEPTED, None)
        self._update_state(job, UpdateState.OFFERED)
        job.task = asyncio.get_running_loop().create_task(self._run_update(job), name=f"update-{self.receiver_id}")

    async def _run_update(self, job: upd.Job, *, carried_on: bool = False) -> None:
        """Steps 2 to 5: fetch and check, wait for the broadcast to end, install, reboot.
        ``carried_on``: after a reset before the switch, from the start again, once the receiver
        has sent its first report (as the firmware does: the service hears the old version's
        birth before the update goes on)."""
        config = self._ctx.config
        if carried_on and self._reported is not None:
            await self._reported.wait()
        if self._update_power_loss(job, UpdateState.OFFERED):
            return
        if job.jitter and not carried_on:
            await asyncio.sleep(self._ctx.rng.uniform(0.0, job.jitter))
        try:
            await upd.fetch_release(
                self._ctx.downloads(), httpx.BasicAuth(self.receiver_id, self._password), job,
                trusted=config.update_keys, hardware=config.hardware,
                running=upd.running_version(self._firmware()),
                retries=config.update_retries, retry_base=config.update_retry_base,
                on_verified_manifest=lambda manifest: self._update_state(job, UpdateState.DOWNLOADING, pct=0),
                progress=lambda done, total: self._download_progress(job, done, total))
        except upd.UpdateFailed as exc:
            log.info("%s: update %s failed: %s: %s", self.receiver_id, job.command_id, exc.reason.value, exc)
            self._finish_update(job, UpdateState.FAILED, exc.reason.value, AckStatus.FAILED, exc.reason.value)
            return
        except Exception as exc:  # a bug must not leave the update hanging under way for ever
            log.exception("%s: update %s broke off", self.receiver_id, job.command_id)
            why = AckReason.DOWNLOAD.value if isinstance(exc, (OSError, httpx.HTTPError)) else "internal"
            self._finish_update(job, UpdateState.FAILED, why, AckStatus.FAILED, why)
            return
        for state in (UpdateState.DOWNLOADED, UpdateState.VERIFIED):
            self._update_state(job, state)
            if self._update_power_loss(job, state):
                return
        deferred: str | None = None
        while (why := self._install_blocked()) is not None:
            if why != deferred:
                deferred = why
                self._update_state(job, UpdateState.DEFERRED, why=why)
                if self._update_power_loss(job, UpdateState.DEFERRED):
                    return
            job.waiter = asyncio.get_running_loop().create_future()
            await job.waiter
        # The new slot is marked to run once, on trial: from here a reset boots the new version.
        self._update_state(job, UpdateState.INSTALLING)
        if self._update_power_loss(job, UpdateState.INSTALLING):
            return
        self._update_state(job, UpdateState.REBOOTING)
        if self._update_power_loss(job, UpdateState.REBOOTING):
            return
        job.task = None
        if self._reboot_task is None:
            self._reboot_task = asyncio.get_running_loop().create_task(self._reboot())

    def _install_blocked(self) -> str | None:
        """Why not to install now: an emergency or priority bulletin or a slot plays."""
        play = self._play
        if play is None:
            return None
        if play.priority is Priority.EMERGENCY:
            return "playing_emergency"
        if play.priority is Priority.PRIORITY:
            return "playing_priority"
        if play.source is PlaySource.SCHEDULE:
            return "playing_slot"
        return None

    def _download_progress(self, job: upd.Job, done: int, total: int) -> None:
        pct = done * 100 // total if total else 100
        if job.pct is None or pct // upd.PCT_STEP > job.pct // upd.PCT_STEP:
            self._update_state(job, UpdateState.DOWNLOADING, pct=pct)
        faults = job.faults
        if faults is not None and faults.power_loss_at is UpdateState.DOWNLOADING and pct >= faults.power_loss_pct:
            self._update_power_loss(job, UpdateState.DOWNLOADING)
            raise asyncio.CancelledError  # the task dies with the RAM

    def _update_power_loss(self, job: upd.Job, state: UpdateState) -> bool:
        """An injected power loss at ``state``: off now, on again after the fault's time."""
        faults = job.faults
        if faults is None or faults.power_loss_at is not state:
            return False
        job.faults = dataclasses.replace(faults, power_loss_at=None)  # once
        log.info("%s: power lost during the update (%s)", self.receiver_id, state.value)
        self.power_loss()
        asyncio.get_running_loop().call_later(faults.off_seconds, self._power_back, self._epoch)
        return True

    def _power_back(self, epoch: int) -> None:
        if not self.powered and self._epoch == epoch:
            self.power_on(ResetCause.POWER_ON)

    def _boot_update(self) -> str | None:
        """At power-on, what the update kept in flash says; returns its command id if it goes
        on. With the trial mark written (installing, rebooting) the new version runs now, once,
        on trial (the mark is removed before it runs). A board that reset while the new version
        was on trial runs the old one again (rolled_back). An update cut short before the mark
        carries on from the start of its download."""
        job = self._update
        if job is None or not job.under_way:
            return None
        if job.trial:
            self._finish_update(job, UpdateState.ROLLED_BACK, job.why or upd.RESET, AckStatus.FAILED,
                                AckReason.ROLLED_BACK.value)
            return None
        if job.state in (UpdateState.INSTALLING, UpdateState.REBOOTING):
            job.trial = True
            job.why = None
            job.trial_timer = asyncio.get_running_loop().call_later(self._ctx.config.update_trial_s,
                                                                    self._trial_expired)
        else:  # the download starts over
            job.state, job.pct, job.why, job.reported = UpdateState.DOWNLOADING, 0, None, False
            job.task = asyncio.get_running_loop().create_task(self._run_update(job, carried_on=True),
                                                              name=f"update-{self.receiver_id}")
        return job.command_id

    def _trial_expired(self) -> None:
        """The new version did not confirm itself in time: the board resets into the old one."""
        job = self._update
        if job is None or not job.trial or not self.powered:
            return
        job.trial_timer = None
        job.why = upd.NO_CONNECTION
        log.info("%s: %s did not confirm itself within %gs: back to the old version", self.receiver_id,
                 job.firmware, self._ctx.config.update_trial_s)
        self.power_loss()
        self.power_on(ResetCause.SOFT)

    def _confirm_update(self) -> None:
        """Step 6: the new version's birth and first report are out: its slot becomes the
        active one."""
        job = self._update
        if job is None or not job.trial:
            return
        self._fw = job.firmware
        self._finish_update(job, UpdateState.CONFIRMED, None, AckStatus.DONE, None)

    def _finish_update(self, job: upd.Job, state: UpdateState, why: str | None, status: AckStatus,
                       ack_why: str | None) -> None:
        job.task = None
        job.trial = False
        if job.trial_timer is not None:
            job.trial_timer.cancel()
            job.trial_timer = None
        self._update_state(job, state, why=why)
        self._remember(job.command_id, status, ack_why)
        client = self._client
        if self._online and client is not None and client.connected:
            self._ack(job.command_id, status, ack_why)
        else:
            job.ack_pending = True  # at the next birth

    def _update_state(self, job: upd.Job, state: UpdateState, *, pct: int | None = None,
                      why: str | None = None) -> None:
        job.state, job.pct, job.why = state, pct, why
        job.reported = False
        self._publish_update(job)

    def _publish_update(self, job: upd.Job) -> None:
        """The retained update status (QoS 1); one not sent is sent after the next birth."""
        client = self._client
        if not (self._online and client is not None and client.connected):
            return
        status = UpdateStatus(session=self.session, sent_at=self._clock(), command_id=job.command_id,
                              release_id=job.release_id, release_version=job.version, state=job.state,
                              percent=job.pct, reason=job.why, fetched=job.got)
        try:
            future = client.publish_nowait(self._topic("update"), _json(status), qos=1, retain=True)
        except MqttError as exc:
            log.info("%s: update status not sent: %s", self.receiver_id, exc)
            return
        job.reported = True
        if future is not None:
            future.add_done_callback(_consume)

    def _report_update(self) -> None:
        """After a birth: the update status and final outcome decided while offline."""
        job = self._update
        if job is None:
            return
        if not job.reported:
            self._publish_update(job)
        if job.ack_pending:
            job.ack_pending = False
            known = self._outcomes.get(job.command_id) if self._outcomes else None
            if known is not None:
                self._ack(job.command_id, known[0], known[1])

    # -- player -----------------------------------------------------------------------------

    def _output_volume(self) -> int:
        play = self._play
        return play.volume if play is not None and play.volume is not None else self.volume

    def _start(self, play: Playback, why: PlayReason) -> None:
        """Open a stream, replacing what plays (preempted)."""
        if self._play is not None:
            self._end(PlayReason.PREEMPTED, publish=False)
        self._play = play
        self._player, self._why = StreamState.CONNECTING, why
        self._publish_play()
        config = self._ctx.config
        loop = asyncio.get_running_loop()
        if config.fetch_streams:
            play.task = loop.create_task(self._fetch(play), name=f"stream-{self.receiver_id}")
        else:
            play.timer = loop.call_later(SIMULATED_OPEN_S, self._opened, play, config.stream_kbps)

    async def _fetch(self, play: Playback) -> None:
        from simulators.stream import Stream, StreamUnreachable

        try:
            stream = await Stream.open(self._ctx.http(), play.url)
        except StreamUnreachable as exc:
            log.info("%s: %s", self.receiver_id, exc)
            self._failed(play)
            return
        if self._play is not play:
            await stream.close()
            return
        self._opened(play, stream.kbps or self._ctx.config.stream_kbps)
        try:
            await stream.play(self._received)
        except (OSError, httpx.HTTPError, TimeoutError) as exc:
            log.info("%s: stream %s broke off: %s", self.receiver_id, play.url, exc)
            if self._play is play:
                self._event(EventKind.STREAM_ERROR, play.label)
                self._end(PlayReason.STREAM_ERROR)
            return
        if self._play is play:
            self._end(PlayReason.ENDED)

    def _received(self, count: int) -> None:
        self._stream_bytes += count

    def _bytes_received(self) -> int:
        """Stream bytes since boot (a simulated stream counts at its bitrate)."""
        play = self._play
        if play is not None and play.playing and not self._ctx.config.fetch_streams and play.kbps:
            return self._stream_bytes + int((asyncio.get_running_loop().time() - play.started) * play.kbps * 125)
        return self._stream_bytes

    def _opened(self, play: Playback, kbps: int) -> None:
        """The first audio arrived: it plays."""
        if self._play is not play:
            return
        play.timer = None
        play.playing = True
        play.kbps = kbps
        play.started = asyncio.get_running_loop().time()
        self._player = StreamState.PLAYING
        self._check_board()  # the amplifier's relay closes
        self._ctx.truth.play_started(self.receiver_id, play.source.value, play.ref, play.priority.value, time.time())
        self._event(EventKind.PLAY_STARTED, play.label)
        if play.command_id is not None:
            self._final(play.command_id, AckStatus.DONE, None)
        if play.duration is not None:
            play.timer = asyncio.get_running_loop().call_later(play.duration, self._end_if, play, PlayReason.ENDED)
        self._publish_play()

    def _failed(self, play: Playback) -> None:
        """The stream could not be opened."""
        if self._play is not play:
            return
        self._play = None
        play.task = None
        self._player, self._why = StreamState.ERROR, PlayReason.STREAM_ERROR
        self._event(EventKind.STREAM_ERROR, play.label)
        if play.command_id is not None:
            self._final(play.command_id, AckStatus.FAILED, AckReason.STREAM_UNREACHABLE.value)
        self._publish_play()
        if self._update is not None:
            self._update.wake()

    def _end_if(self, play: Playback, why: PlayReason) -> None:
        if self._play is play:
            play.timer = None
            self._end(why)

    def _end(self, why: PlayReason, *, publish: bool = True) -> None:
        """Stop what plays: play_stopped "<why>:<ref>" if it was playing."""
        play, self._play = self._play, None
        if play is None:
            return
        if play.task is asyncio.current_task():
            play.task = None  # ending by itself: nothing to cancel
        play.cancel()
        if play.playing:
            if not self._ctx.config.fetch_streams and play.kbps:
                self._stream_bytes += int((asyncio.get_running_loop().time() - play.started) * play.kbps * 125)
            self._ctx.truth.play_ended(self.receiver_id, time.time(), why.value)
            self._event(EventKind.PLAY_STOPPED, f"{why.value}:{play.ref}")
        elif play.command_id is not None:
            # Replaced or stopped before its stream opened: it never played.
            self._final(play.command_id, AckStatus.FAILED, why.value)
        self._player = StreamState.ERROR if why is PlayReason.STREAM_ERROR else StreamState.IDLE
        self._why = why
        self._check_board()  # the amplifier's relay opens
        if self._update is not None:
            self._update.wake()  # a deferred install looks again
        if publish:
            self._publish_play()

    def _publish_play(self) -> None:
        """The retained play status (on every change, and after every birth)."""
        client = self._client
        if not (self._online and client is not None and client.connected):
            return
        play = self._play
        status = PlayStatus(
            session=self.session, sent_at=self._clock(), stream=self._player,
            priority=play.priority if play is not None else None,
            source=play.source if play is not None else PlaySource.NONE,
            ref=play.ref if play is not None else None,
            url=play.url if play is not None else None,
            volume=self._output_volume(), why=self._why,
            schedule_version=self.schedule.schedule_version if self.schedule is not None else None,
        )
        try:
            future = client.publish_nowait(self._topic("play"), _json(status), qos=1, retain=True)
        except MqttError as exc:
            log.info("%s: play status not sent: %s", self.receiver_id, exc)
            return
        if future is not None:
            future.add_done_callback(_consume)

    # -- schedule ---------------------------------------------------------------------------

    def _arm_schedule(self) -> None:
        """Run the schedule from now: only while powered, with a schedule and a synced clock."""
        if self._slot_timer is not None:
            self._slot_timer.cancel()
            self._slot_timer = None
        if self.powered and self.schedule is not None and self._synced_at is not None:
            self._slot_boundary()

    def _slot_boundary(self) -> None:
        """At a slot's start or end (by the receiver's own clock): start or stop slots, then
        arm the timer for the next boundary."""
        self._slot_timer = None
        schedule = self.schedule
        if schedule is None or not self.powered:
            return
        clock = time.time() + self._offset
        found = sched.active(schedule, clock)
        play = self._play
        if play is not None and play.source is PlaySource.SCHEDULE and (found is None or found[1] != play.occurrence):
            self._end(PlayReason.ENDED)  # its slot is over (or no longer in the schedule)
            play = None
        if found is not None:
            slot, occurrence, _ = found
            if occurrence != self._slot_seen:
                self._slot_seen = occurrence
                # A slot starts unless something of higher priority plays.
                if play is None or slot.priority.rank >= play.priority.rank:
                    self._start(Playback(PlaySource.SCHEDULE, slot.slot_id, slot.priority, slot.url,
                                         volume=slot.volume, occurrence=occurrence), PlayReason.SCHEDULE)
        boundary = sched.next_boundary(schedule, clock)
        if boundary is not None:
            self._slot_timer = asyncio.get_running_loop().call_later(
                boundary - clock + BOUNDARY_MARGIN_S, self._slot_boundary)


def _consume(future: asyncio.Future[bytes]) -> None:
    if not future.cancelled():
        future.exception()
