"""A fleet of virtual receivers in one asyncio process, with fault injection and ground truth.

    fleet = Fleet("127.0.0.1", 1883, {"rx-1": "secret"}, keepalive=60, telemetry_interval=60)
    await fleet.start()
    await fleet.cut_link("rx-1", 90)        # 4G silent for 90 s, restored by itself
    await fleet.power_loss("rx-1", 30)      # off for 30 s, then boots
    ...
    await fleet.stop()
    fleet.ground_truth.availability("rx-1", t0, t1)

Fault methods return once the fault has begun (``wait=True``: once it is over); the end of a
fault (restore, boot) is scheduled by the fleet.

Receivers named in ``firmware_receivers`` are real: the MicroPython firmware in a process
each (:mod:`simulators.firmware`), behind a relay that can cut their link.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import tempfile
import time
from collections.abc import Collection, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fleet_service.firmware import keys
from fleet_service.protocol import ResetCause
from simulators.firmware import FirmwareReceiver, unavailable_reason
from simulators.ground_truth import GroundTruth
from simulators.receiver import Context, ReceiverConfig, ReceiverStatus, VirtualReceiver
from simulators.scenario import Fault, FaultKind, Scenario
from simulators.sntp import SntpServer
from simulators.update import Job, UpdateFaults

# A board fault's reading, and the reading once it is over (simulators.scenario.FaultKind).
FAULTY_READINGS: Mapping[FaultKind, dict[str, Any]] = {
    FaultKind.LOW_SUPPLY: {"supply_v": 10.5},
    FaultKind.OVERHEAT: {"temperature_c": 90.0},
    FaultKind.AMP_FAULT: {"amp_fault": True},
}
NORMAL_READINGS: Mapping[FaultKind, dict[str, Any]] = {
    FaultKind.LOW_SUPPLY: {"supply_v": 12.2},
    FaultKind.OVERHEAT: {"temperature_c": 45.0},
    FaultKind.AMP_FAULT: {"amp_fault": False},
}

log = logging.getLogger("loa.simulator")

# Fleets up to this size fetch their streams for real by default (an HTTP connection per
# playing receiver); larger ones simulate playback. ``fetch_streams`` overrides it.
FETCH_STREAMS_UP_TO = 100

Receiver = VirtualReceiver | FirmwareReceiver


class Fleet:
    def __init__(
        self,
        broker_host: str,
        broker_port: int,
        credentials: Mapping[str, str],
        *,
        keepalive: int = 300,
        telemetry_interval: float = 300.0,
        firmware: str = "loa-sim-1.0.0",
        connect_timeout: float = 10.0,
        response_timeout: float | None = None,
        ack_timeout: float = 10.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        attach_delay: tuple[float, float] = (1.0, 5.0),
        sessions: Mapping[str, int] | None = None,
        clock_skew: Mapping[str, float] | None = None,
        unsynced: Collection[str] = (),
        ground_truth: GroundTruth | Path | str | None = None,
        seed: int | None = None,
        fetch_streams: bool | None = None,
        stream_kbps: int = 64,
        firmware_receivers: Collection[str] = (),
        firmware_dir: Path | str | None = None,
        hardware: str = "esp32-a7670",
        update_keys: Iterable[str | bytes | Ed25519PublicKey] = (),
        update_retries: int = 6,
        update_retry_base: float = 2.0,
        update_timeout: float = 20.0,
        update_trial_s: float = 300.0,
        update_faults: Mapping[str, UpdateFaults] | None = None,
    ) -> None:
        """``credentials``: receiver id → MQTT password (the id is also the username and the
        client id). ``sessions``: initial session counters (as persisted by a previous run;
        default 0). ``clock_skew``: each receiver's clock error at power-on, seconds;
        ``unsynced``: receivers whose clock never syncs. ``ground_truth``: a
        :class:`GroundTruth`, or a path for its JSON-lines file. ``seed`` makes the jitter,
        telemetry values and flaps reproducible. ``fetch_streams``: really fetch the streams
        of play commands and slots (default: for fleets of at most FETCH_STREAMS_UP_TO), else
        simulate them at ``stream_kbps``. ``firmware_receivers``: ids of ``credentials`` run as
        real MicroPython firmware processes, their flash directories under ``firmware_dir``
        (default: a temporary directory).

        Firmware updates (protocol 1.2): ``hardware`` is the virtual boards' family (births'
        ``hw``); ``update_keys`` the release signing public keys built into their firmware
        (the fleet's: base64 of the 32 raw bytes or a key file as LOA_FIRMWARE_KEYS gives
        them, raw bytes, or key objects); ``update_retries``/``update_retry_base`` how a cut
        download is retried, ``update_timeout`` its HTTP timeout, ``update_trial_s`` how long a
        new version has to confirm itself; ``update_faults`` faults in each named receiver's
        next update (:class:`~simulators.update.UpdateFaults`)."""
        if firmware_receivers:
            unknown = set(firmware_receivers) - set(credentials)
            if unknown:
                raise ValueError(f"firmware receivers without credentials: {', '.join(sorted(unknown))}")
            reason = unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"cannot run firmware receivers: {reason}")
        self.config = ReceiverConfig(
            host=broker_host,
            port=broker_port,
            keepalive=keepalive,
            telemetry_interval=telemetry_interval,
            firmware=firmware,
            connect_timeout=connect_timeout,
            response_timeout=response_timeout,
            ack_timeout=ack_timeout,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            attach_delay=attach_delay,
            fetch_streams=len(credentials) <= FETCH_STREAMS_UP_TO if fetch_streams is None else fetch_streams,
            stream_kbps=stream_kbps,
            hardware=hardware,
            update_keys=tuple(_raw_key(key) for key in update_keys),
            update_retries=update_retries,
            update_retry_base=update_retry_base,
            update_timeout=update_timeout,
            update_trial_s=update_trial_s,
        )
        if isinstance(ground_truth, GroundTruth):
            self.ground_truth = ground_truth
            self._owns_truth = False
        else:
            self.ground_truth = GroundTruth(ground_truth)
            self._owns_truth = True
        self._rng = random.Random(seed)
        self._ctx = Context(self.config, self._rng, self.ground_truth)
        sessions = sessions or {}
        clock_skew = clock_skew or {}
        unsynced = set(unsynced)
        self._firmware_tmp: tempfile.TemporaryDirectory[str] | None = None
        if firmware_receivers and firmware_dir is None:
            self._firmware_tmp = tempfile.TemporaryDirectory(prefix="loa-firmware-")
            firmware_dir = self._firmware_tmp.name
        self._sntp: SntpServer | None = None
        self._receivers: dict[str, Receiver] = {}
        for rid, password in credentials.items():
            if rid in firmware_receivers:
                self._receivers[rid] = FirmwareReceiver(rid, password, self.config, self.ground_truth,
                                                        Path(firmware_dir) / rid)  # type: ignore[arg-type]
            else:
                self._receivers[rid] = VirtualReceiver(
                    rid, password, self._ctx, session=sessions.get(rid, 0), clock_skew=clock_skew.get(rid, 0.0),
                    clock_sync=rid not in unsynced)
        for rid, faults in (update_faults or {}).items():
            self.set_update_faults(rid, faults)
        self._cut_until: dict[str, float] = {}
        self._power_token: dict[str, object] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def receivers(self) -> Mapping[str, Receiver]:
        return self._receivers

    @property
    def firmware_receivers(self) -> list[str]:
        return [rid for rid, rx in self._receivers.items() if isinstance(rx, FirmwareReceiver)]

    async def start(self) -> None:
        """Power every receiver on (each connects after its modem attach delay)."""
        self._started = True
        if self.firmware_receivers and self._sntp is None:
            # The firmware receivers' clock reference: schedules play only by a synced clock,
            # and no traffic leaves the machine, so the fleet serves the host's clock itself.
            self._sntp = SntpServer().start()
        for rx in self._receivers.values():
            if isinstance(rx, FirmwareReceiver):
                assert self._sntp is not None
                rx.ntp = self._sntp.address
                await rx.prepare()
            rx.power_on(ResetCause.POWER_ON)

    async def stop(self, *, clean: bool = True, timeout: float = 2.0) -> None:
        """Stop every receiver: ``clean`` sends each online receiver's shutdown message and
        DISCONNECT (waiting at most ``timeout`` for the acknowledgements); then every socket is
        closed, pending faults are dropped and the ground-truth file is flushed."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if clean:
            await asyncio.gather(*(rx.shutdown(timeout=timeout) for rx in self._receivers.values()), return_exceptions=True)
        for rx in self._receivers.values():
            rx.abort()
            if isinstance(rx, FirmwareReceiver):
                await rx.close()
        self._cut_until.clear()
        if self._sntp is not None:
            self._sntp.stop()
            self._sntp = None
        await self._ctx.aclose()
        await asyncio.sleep(0)  # let the transports close
        if self._firmware_tmp is not None:
            self._firmware_tmp.cleanup()
            self._firmware_tmp = None
        if self._owns_truth:
            self.ground_truth.close()
        else:
            self.ground_truth.flush()
        self._started = False

    async def __aenter__(self) -> Fleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults -----------------------------------------------------------------------------

    async def cut_link(self, rid: str, seconds: float | None = None, *, wait: bool = False) -> None:
        """The receiver's 4G link goes silent: the socket stays open, nothing passes either
        way. Restored after ``seconds`` (None: until :meth:`restore_link`). A cut while cut
        extends it to the later end."""
        rx = self._rx(rid)
        loop = asyncio.get_running_loop()
        until = math.inf if seconds is None else loop.time() + seconds
        self._cut_until[rid] = max(self._cut_until.get(rid, 0.0), until) if rx.link.is_cut else until
        log.info("%s: link cut for %s", rid, "ever" if seconds is None else f"{seconds:g}s")
        rx.cut_link()
        if seconds is None:
            return
        if wait:
            await self._restore_when_due(rid)
        else:
            self._spawn(self._restore_when_due(rid))

    async def restore_link(self, rid: str) -> None:
        rx = self._rx(rid)
        self._cut_until.pop(rid, None)
        if rx.link.is_cut:
            log.info("%s: link restored", rid)
        rx.restore_link()

    async def flap_link(
        self,
        rid: str,
        duration: float,
        *,
        cut: tuple[float, float] = (1.0, 5.0),
        gap: tuple[float, float] = (1.0, 10.0),
        wait: bool = False,
    ) -> None:
        """Repeated short cuts (length uniform in ``cut``) separated by ``gap`` seconds of
        working link, for ``duration`` seconds, starting with a cut."""
        self._rx(rid)
        if wait:
            await self._flap(rid, duration, cut, gap)
        else:
            self._spawn(self._flap(rid, duration, cut, gap))

    async def power_loss(self, rid: str, off_seconds: float | None = None, *, wait: bool = False) -> None:
        """The receiver stops instantly (no goodbye, no FIN) and boots again after
        ``off_seconds`` (None: stays off until :meth:`power_on`) with reset cause power_on."""
        rx = self._rx(rid)
        if not rx.powered:
            return
        log.info("%s: power lost for %s", rid, "ever" if off_seconds is None else f"{off_seconds:g}s")
        token = self._power_token[rid] = object()
        rx.power_loss()
        if off_seconds is None:
            return
        boot = self._boot_later(rid, token, off_seconds, ResetCause.POWER_ON)
        if wait:
            await boot
        else:
            self._spawn(boot)

    async def power_on(self, rid: str, reset_cause: ResetCause = ResetCause.POWER_ON) -> None:
        self._power_token.pop(rid, None)
        self._rx(rid).power_on(reset_cause)

    async def clean_reboot(self, rid: str, off_seconds: float = 1.0, *, wait: bool = False) -> None:
        """Planned reboot: shutdown message, DISCONNECT, off for ``off_seconds``, boot with
        reset cause soft. Returns once the shutdown has been sent (``wait``: once booted)."""
        rx = self._rx(rid)
        if not rx.powered:
            return
        log.info("%s: clean reboot (%gs off)", rid, off_seconds)
        token = self._power_token[rid] = object()
        await rx.shutdown()
        boot = self._boot_later(rid, token, off_seconds, ResetCause.SOFT)
        if wait:
            await boot
        else:
            self._spawn(boot)

    def set_clock_skew(self, rid: str, seconds: float) -> None:
        """The receiver's own clock is ``seconds`` off from now on, and again after every
        power-on, until a clock sync corrects it (its payload timestamps and its schedule; never
        the ground truth)."""
        self._rx(rid).set_clock(seconds)

    def set_clock_sync(self, rid: str, enabled: bool) -> None:
        """Whether the receiver's clock syncs at link-up (False: it keeps its error, checks no
        expiry and runs no schedule)."""
        self._rx(rid).clock_sync = enabled

    def set_readings(self, rid: str, *, supply_v: float | None = None, temperature_c: float | None = None,
                     amp_fault: bool | None = None) -> None:
        """The receiver's board reads this from now on (None: as it was), across power loss:
        the 12 V input in volts, the chip's die in degrees C, and whether the amplifier draws
        no current when the receiver switches it on to play. The receiver reports them in its
        telemetry and raises the board events (low_supply, overheat, amp_fault, amp_recovered)
        as the firmware does."""
        self._rx(rid).set_readings(supply_v=supply_v, temperature_c=temperature_c, amp_fault=amp_fault)

    def set_update_faults(self, rid: str, faults: UpdateFaults | None) -> None:
        """Faults in the receiver's next firmware update (a cut download, a corrupted byte, a
        new version that never confirms, a power loss at a step); None: none."""
        rx = self._rx(rid)
        if isinstance(rx, FirmwareReceiver):
            raise ValueError(f"{rid} runs the real firmware: its updates take no injected faults")
        rx.set_update_faults(faults)

    async def board_fault(self, rid: str, kind: FaultKind, seconds: float, *, wait: bool = False) -> None:
        """A board fault (``FaultKind.LOW_SUPPLY``, ``OVERHEAT``, ``AMP_FAULT``): the reading
        goes bad now and back to normal after ``seconds``."""
        if kind not in FAULTY_READINGS:
            raise ValueError(f"{kind.value} is not a board fault")
        log.info("%s: %s for %gs", rid, kind.value, seconds)
        self.set_readings(rid, **FAULTY_READINGS[kind])
        if wait:
            await self._readings_later(rid, kind, seconds)
        else:
            self._spawn(self._readings_later(rid, kind, seconds))

    async def inject(self, fault: Fault, *, wait: bool = False) -> None:
        """Apply one fault of a scenario."""
        if fault.kind is FaultKind.LINK_CUT:
            await self.cut_link(fault.receiver, fault.length, wait=wait)
        elif fault.kind is FaultKind.POWER_LOSS:
            await self.power_loss(fault.receiver, fault.length, wait=wait)
        elif fault.kind is FaultKind.FLAP:
            await self.flap_link(fault.receiver, fault.length, wait=wait)
        elif fault.kind is FaultKind.CLEAN_REBOOT:
            await self.clean_reboot(fault.receiver, fault.length, wait=wait)
        elif fault.kind in FAULTY_READINGS:
            await self.board_fault(fault.receiver, fault.kind, fault.length, wait=wait)
        else:  # pragma: no cover - exhaustive
            raise ValueError(f"unknown fault kind {fault.kind!r}")

    async def run_scenario(self, scenario: Scenario) -> None:
        """Apply the scenario's clock skews, then each fault at its offset from now; returns
        when the scenario's duration has passed. Faults for unknown receivers are skipped."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for rid, skew in scenario.clock_skew.items():
            if rid in self._receivers:
                self.set_clock_skew(rid, skew)
        for rid in scenario.unsynced:
            if rid in self._receivers:
                self.set_clock_sync(rid, False)
        for rid, faults in scenario.update_faults.items():
            if rid in self._receivers:
                self.set_update_faults(rid, faults)
        for fault in sorted(scenario.faults, key=lambda f: f.at):
            if fault.receiver not in self._receivers:
                continue
            delay = start + fault.at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._spawn(self.inject(fault, wait=True))
        remaining = start + scenario.duration - loop.time()
        if remaining > 0:
            await asyncio.sleep(remaining)

    # -- observation ------------------------------------------------------------------------

    def status(self, rid: str) -> ReceiverStatus:
        return self._rx(rid).status()

    def update_job(self, rid: str) -> Job | None:
        """The receiver's latest firmware update, kept after it ended as flash keeps it (its
        state, the bytes it fetched, when it entered each state), or None: none yet, or a
        receiver running the real firmware."""
        rx = self._rx(rid)
        return rx._update if isinstance(rx, VirtualReceiver) else None  # the receiver's flash, read only

    def sessions(self) -> dict[str, int]:
        """Current session counters (persist them to start the next run where this one ended)."""
        return {rid: rx.session for rid, rx in self._receivers.items()}

    async def wait_up(self, rids: Iterable[str] | None = None, *, timeout: float = 30.0) -> None:
        """Wait until the ground truth says every given receiver (default: all) is up."""
        wanted: Collection[str] = list(rids) if rids is not None else list(self._receivers)
        deadline = time.monotonic() + timeout
        while True:
            down = [rid for rid in wanted if not self.ground_truth.is_up(rid)]
            if not down:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(down)} receiver(s) not up after {timeout:g}s: {', '.join(down[:10])}")
            await asyncio.sleep(0.02)

    # -- internals --------------------------------------------------------------------------

    def _rx(self, rid: str) -> Receiver:
        try:
            return self._receivers[rid]
        except KeyError:
            raise KeyError(f"no receiver {rid!r} in this fleet") from None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fault task failed", exc_info=task.exception())

    async def _restore_when_due(self, rid: str) -> None:
        loop = asyncio.get_running_loop()
        while True:
            until = self._cut_until.get(rid)
            if until is None or until == math.inf:
                return  # restored by someone else, or cut until further notice
            delay = until - loop.time()
            if delay <= 0:
                break
            await asyncio.sleep(delay)
        del self._cut_until[rid]
        log.info("%s: link restored", rid)
        self._receivers[rid].restore_link()

    async def _flap(self, rid: str, duration: float, cut: tuple[float, float], gap: tuple[float, float]) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + duration
        while True:
            left = end - loop.time()
            if left <= 0:
                return
            await self.cut_link(rid, min(self._rng.uniform(*cut), left), wait=True)
            left = end - loop.time()
            if left <= 0:
                return
            await asyncio.sleep(min(self._rng.uniform(*gap), left))

    async def _readings_later(self, rid: str, kind: FaultKind, seconds: float) -> None:
        await asyncio.sleep(seconds)
        log.info("%s: %s over", rid, kind.value)
        self.set_readings(rid, **NORMAL_READINGS[kind])

    async def _boot_later(self, rid: str, token: object, off_seconds: float, cause: ResetCause) -> None:
        await asyncio.sleep(off_seconds)
        if self._power_token.get(rid) is token:
            del self._power_token[rid]
            log.info("%s: power on (%s)", rid, cause.value)
            self._receivers[rid].power_on(cause)


def _raw_key(key: str | bytes | Ed25519PublicKey) -> bytes:
    """A trusted release key as its 32 raw bytes."""
    if isinstance(key, bytes):
        if len(key) != keys.RAW_KEY_BYTES:
            raise ValueError(f"a raw Ed25519 public key is {keys.RAW_KEY_BYTES} bytes, not {len(key)}")
        return key
    return keys.raw_public(keys.load_public(key) if isinstance(key, str) else key)
