"""How the conformance suite runs a receiver implementation: a small asynchronous driver.

A driver starts one receiver (one receiver id) against a broker and can cut its power, power it
on again, reboot it cleanly and stop it. It is deliberately small, so that a driver for the
firmware can be a subprocess:

    start      spawn the interpreter with a config naming host, port, login, keepalive,
               telemetry interval and a state directory (its "flash")
    power_off  SIGKILL the process (no goodbye, no DISCONNECT)
    power_on   spawn it again with the same state directory, so the persisted session
               counter carries on
    reboot     ask the process for a planned restart (goodbye, DISCONNECT, boot again)
    stop       end it for good and release everything

Everything the suite checks is observed at the broker; the driver only acts. Optional
capabilities widen what can be checked; the tests that need them are skipped, with the reason,
for a driver without them:

    cut_link(seconds)    the network path goes silent (no FIN, no RST) for ``seconds``
    commands_received()  how many messages the receiver got on its ``cmd`` topic so far
    set_readings(...)    what the board's sensors read from now on (supply voltage, die
                         temperature, an amplifier that draws no current), for the board events
    update_faults(...)   faults in the receiver's next firmware update (a cut download, a
                         corrupted byte, a new version that never connects, a power loss at a step)

A driver whose implementation does not carry out firmware updates (protocol 1.2) yet says so
in ``updates_unsupported`` (the reason); the update tests are then skipped with it.

A method of either capability may also raise :class:`Unsupported` when the implementation
turns out not to support it at run time.

Drivers are chosen by name (``--receiver-impl NAME`` or ``LOA_RECEIVER_IMPL=NAME``): a key of
``DRIVERS``, or ``package.module:Factory`` for a driver kept elsewhere. The factory is called
without arguments; a driver reads whatever else it needs (an interpreter, a firmware
directory) from its own environment variables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fleet_service.protocol.messages import UpdateState
from simulators.fleet import Fleet
from simulators.update import UpdateFaults


@dataclass(frozen=True, slots=True)
class ReceiverSpec:
    """What one receiver under test is told (the field values come from the suite)."""

    receiver_id: str
    host: str
    port: int
    username: str
    password: str
    keepalive: int               # MQTT keepalive, seconds
    telemetry_interval: float    # seconds between telemetry reports
    # Longest pause between two connection attempts the suite waits for. The field default is
    # much longer (a minute); an implementation whose backoff is configurable should cap it here,
    # or reconnections outlast the suite's deadlines.
    backoff_cap: float
    # Persistent storage of this receiver (its flash): empty at start(), kept as it is across
    # power_off()/power_on() and reboot(). Where a real implementation keeps its session counter.
    state_dir: Path
    # -- clock (protocol 1.1). The suite runs an SNTP server on loopback serving the host's
    # clock, which is also the observer's: a receiver synced to it stamps times the suite can
    # check. The defaults describe a receiver with a right clock and a reachable server.
    # "host:port" of that SNTP server: the implementation's clock reference ("" = none given;
    # an implementation that syncs by other means may ignore it).
    ntp_server: str = ""
    # Seconds the receiver's clock is off at every power-on, before its first sync (its RTC
    # error). The firmware driver has its simulated board start its clock this far off.
    clock_offset: float = 0.0
    # False: the receiver must not manage to sync its clock at all (e.g. point it at an SNTP
    # server that does not answer and give its modem no network time), so that what it does
    # unsynced can be checked: no expiry check, no schedule.
    clock_sync: bool = True
    # -- firmware updates (protocol 1.2). The receiver's hardware family (births' "hw"), the
    # release signing public keys to trust as if built into its firmware (base64 of the 32 raw
    # bytes, as LOA_FIRMWARE_KEYS gives them), how long a new version has on trial to connect
    # and confirm itself, and the first pause before a cut download is resumed.
    hardware: str = "esp32-a7670"
    firmware_keys: tuple[str, ...] = ()
    update_trial_s: float = 300.0
    update_retry_base: float = 2.0


class Unsupported(Exception):
    """An optional capability the implementation does not have; the message says why."""


class ReceiverDriver(Protocol):
    """One receiver implementation, one receiver. Every method returns once the action has
    begun; what follows on the wire is for the suite to observe."""

    async def start(self, spec: ReceiverSpec) -> None:
        """Power a factory-new receiver on (empty ``spec.state_dir``). Called once."""

    async def power_off(self) -> None:
        """Abrupt power loss: the receiver disappears without goodbye or DISCONNECT, as a
        SIGKILLed process does. It stays off until :meth:`power_on`."""

    async def power_on(self) -> None:
        """Boot again after :meth:`power_off`, with the persistent storage as it was."""

    async def reboot(self) -> None:
        """Planned restart: the receiver says goodbye, disconnects and boots again by itself."""

    async def stop(self) -> None:
        """End the receiver for good and release everything it holds. Must work in any state
        (running, powered off, never started) and more than once. What it publishes while
        stopping is not checked."""


@runtime_checkable
class CanCutLink(Protocol):
    async def cut_link(self, seconds: float) -> None:
        """Silence the receiver's network path (nothing passes either way, no FIN or RST) for
        ``seconds``, then restore it; returns once the cut has begun."""


@runtime_checkable
class CountsCommands(Protocol):
    def commands_received(self) -> int:
        """Messages the receiver has received on its ``cmd`` topic since :meth:`start`."""


@runtime_checkable
class SetsReadings(Protocol):
    async def set_readings(self, *, supply_v: float | None = None, temperature_c: float | None = None,
                           amp_fault: bool | None = None) -> None:
        """From now on the board reads ``supply_v`` volts on its 12 V input, ``temperature_c``
        on the chip's die, and (``amp_fault``) no current from the amplifier when it is
        switched on; None leaves a reading as it is."""


@runtime_checkable
class InjectsUpdateFaults(Protocol):
    async def update_faults(self, *, cut_after: int | None = None, cuts: int = 1, corrupt_at: int | None = None,
                            never_confirm: bool = False, power_loss_at: str | None = None,
                            power_loss_pct: int = 50, off_seconds: float = 1.0) -> None:
        """Faults in the receiver's next firmware update: the first ``cuts`` responses that
        bring a file are cut after ``cut_after`` bytes; the byte at offset ``corrupt_at`` of
        the release's files (in the manifest's order) arrives changed; the new version never
        connects (``never_confirm``); the power goes (for ``off_seconds``) when the update
        reaches the state ``power_loss_at`` (``downloading``: at ``power_loss_pct`` percent)."""


class SimulatorDriver:
    """The virtual receiver of ``simulators/`` (a one-receiver :class:`~simulators.fleet.Fleet`).
    Its session counter, remembered commands, schedule, volume and settings live in the
    receiver object, which survives power loss and reboot the way flash would, so ``state_dir``
    is not needed."""

    # Connection timing the spec does not fix, chosen for a local broker: connection attempts
    # start within 50 ms of power-on and give up after 1 s; the first retry waits up to 0.1 s.
    CONNECT_TIMEOUT = 1.0
    ACK_TIMEOUT = 2.0
    BACKOFF_BASE = 0.1
    ATTACH_DELAY = (0.0, 0.05)
    # Power stays off this long during a clean reboot.
    REBOOT_OFF_SECONDS = 0.2
    # A firmware download's HTTP timeout (the release server is on loopback).
    UPDATE_TIMEOUT = 5.0

    def __init__(self) -> None:
        self._fleet: Fleet | None = None
        self._rid = ""

    async def start(self, spec: ReceiverSpec) -> None:
        if self._fleet is not None:
            raise RuntimeError("start() is called once per driver")
        if spec.username != spec.receiver_id:
            raise ValueError("the simulator logs in with its receiver id as username")
        self._rid = spec.receiver_id
        self._fleet = Fleet(
            spec.host, spec.port, {spec.receiver_id: spec.password},
            keepalive=spec.keepalive,
            telemetry_interval=spec.telemetry_interval,
            connect_timeout=self.CONNECT_TIMEOUT,
            ack_timeout=self.ACK_TIMEOUT,
            backoff_base=min(self.BACKOFF_BASE, spec.backoff_cap),
            backoff_cap=spec.backoff_cap,
            attach_delay=self.ATTACH_DELAY,
            # The virtual receiver syncs against the host clock, the reference the SNTP server
            # serves, so spec.ntp_server is not needed.
            clock_skew={spec.receiver_id: spec.clock_offset},
            unsynced=() if spec.clock_sync else (spec.receiver_id,),
            fetch_streams=True,
            hardware=spec.hardware,
            update_keys=spec.firmware_keys,
            update_trial_s=spec.update_trial_s,
            update_retry_base=spec.update_retry_base,
            update_timeout=self.UPDATE_TIMEOUT,
        )
        await self._fleet.start()

    def _running(self) -> Fleet:
        if self._fleet is None:
            raise RuntimeError("the receiver was not started")
        return self._fleet

    async def power_off(self) -> None:
        await self._running().power_loss(self._rid)

    async def power_on(self) -> None:
        await self._running().power_on(self._rid)

    async def reboot(self) -> None:
        await self._running().clean_reboot(self._rid, off_seconds=self.REBOOT_OFF_SECONDS)

    async def stop(self) -> None:
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            await fleet.stop(timeout=1.0)

    async def cut_link(self, seconds: float) -> None:
        await self._running().cut_link(self._rid, seconds)

    def commands_received(self) -> int:
        return self._running().status(self._rid).commands_received

    async def set_readings(self, *, supply_v: float | None = None, temperature_c: float | None = None,
                           amp_fault: bool | None = None) -> None:
        self._running().set_readings(self._rid, supply_v=supply_v, temperature_c=temperature_c, amp_fault=amp_fault)

    async def update_faults(self, *, cut_after: int | None = None, cuts: int = 1, corrupt_at: int | None = None,
                            never_confirm: bool = False, power_loss_at: str | None = None,
                            power_loss_pct: int = 50, off_seconds: float = 1.0) -> None:
        self._running().set_update_faults(self._rid, UpdateFaults(
            cut_after=cut_after, cuts=cuts, corrupt_at=corrupt_at, never_confirm=never_confirm,
            power_loss_at=UpdateState(power_loss_at) if power_loss_at is not None else None,
            power_loss_pct=power_loss_pct, off_seconds=off_seconds))


# Implementations the suite knows by name; anything else is given as "module:Factory".
DRIVERS: dict[str, str] = {
    "simulator": f"{__name__}:SimulatorDriver",
    "firmware": "tests.conformance.firmware_driver:FirmwareDriver",
}


def load_driver(name: str) -> ReceiverDriver:
    """A new driver for the implementation called ``name`` (a key of ``DRIVERS`` or
    ``package.module:Factory``)."""
    target = DRIVERS.get(name, name)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown receiver implementation {name!r}: use one of {known} or 'package.module:Factory'")
    factory = getattr(importlib.import_module(module_name), attribute)
    return factory()

