"""What every benchmark needs, in one place: the machine and its idleness, CPU and memory of the
benchmark's processes, a private Mosquitto with its logins and ``$SYS`` observer, a registry of
N receivers, ``loa serve`` in its own process, a virtual fleet in simulator processes, py-spy,
and the results section (date, machine, command) printed and appended to bench/RESULTS.md.

The benchmarks (bench/*.py) keep only what they measure; see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

RECEIVER_PREFIX = "rx"
# Receivers per station in a benchmark registry (a commune station has 10-20).
RECEIVERS_PER_STATION = 20
SEED = 20261126
# Mosquitto publishes $SYS this often (seconds): the resolution of the broker's counts.
SYS_INTERVAL_S = 1
SERVICE_USER = "loa-service"
# A broker login that may read $SYS (and the receivers' state topics): the benchmark's own.
OBSERVER_USER = "bench-observer"
# File descriptors wanted by the broker and fleet processes (one socket per receiver each).
NOFILE = 65536
# Upper bound on one wait: a process starting, a broker or service getting ready.
START_TIMEOUT_S = 180.0
# A machine using fewer cores than this (besides the benchmark) counts as idle.
QUIET_MACHINE_CORES = 0.3
# The service's ingest status is polled this often by ServicePoller.
SERVICE_POLL_S = 1.0
# A simulator process reports its receivers' state this often; its event loop is probed this
# often (the probe's lateness is its lag).
SIMULATOR_STATUS_S = 1.0
LAG_PROBE_S = 0.1


# --- receivers and their registry -----------------------------------------------------------

def receiver_ids(count: int) -> list[str]:
    return [f"{RECEIVER_PREFIX}-{i:05d}" for i in range(count)]


@dataclass
class Registry:
    path: Path
    credentials: dict[str, str]
    token: str
    seconds: float

    @property
    def stations(self) -> int:
        return stations_for(len(self.credentials))


def stations_for(receivers: int) -> int:
    return max(1, receivers // RECEIVERS_PER_STATION)


def make_registry(workdir: Path, receivers: int) -> Registry:
    """A migrated SQLite registry with ``receivers`` registered and provisioned through the
    registry service (one province, one district, a station per RECEIVERS_PER_STATION
    receivers), and an admin with an API token. Its outbox is marked applied, as a running
    service leaves it: the benchmarks measure a fleet at work, not the import of one (whose
    20,000 side effects a service would otherwise apply during the first run). Each run copies it
    (``copy_registry``), so every run starts from the same registry and an empty ledger."""
    from fleet_service.auth import service as auth
    from fleet_service.auth.models import Role
    from sqlalchemy import update

    from fleet_service.db import make_engine, make_sessionmaker, session_scope, utcnow
    from fleet_service.migrations import upgrade
    from fleet_service.outbox.models import OutboxEntry
    from fleet_service.registry import service as registry
    from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate

    started = time.monotonic()
    path = workdir / "registry.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = make_engine(url)
    credentials: dict[str, str] = {}
    try:
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as session:
            province = registry.create_region(session, RegionCreate(name="Thái Nguyên", level="tỉnh", code="bench-p"))
            district = registry.create_region(
                session, RegionCreate(name="Đại Từ", level="huyện", code="bench-d", parent_id=province.id))
            stations = [registry.create_station(session, StationCreate(region_id=district.id, name=f"Đài {i}")).id
                        for i in range(stations_for(receivers))]
            for i, rid in enumerate(receiver_ids(receivers)):
                registry.register_receiver(session, ReceiverCreate(
                    id=rid, hardware_id=f"bench-hw-{i:05d}", station_id=stations[i % len(stations)]))
                credentials[rid] = registry.provision(session, rid).mqtt_password
            user = auth.create_user(session, "bench-admin", role=Role.ADMIN, password=None)
            _, token = auth.issue_token(session, user.id, "bench")
            session.execute(update(OutboxEntry).where(OutboxEntry.done_at.is_(None))
                            .values(done_at=utcnow(), payload="{}"))
    finally:
        engine.dispose()
    return Registry(path, credentials, token, time.monotonic() - started)


def copy_registry(registry: Registry | Path, to: Path) -> str:
    """A fresh copy of the registry database at ``to``; returns its SQLAlchemy URL."""
    shutil.copyfile(registry.path if isinstance(registry, Registry) else registry, to)
    return f"sqlite:///{to}"


def split_credentials(workdir: Path, credentials: dict[str, str], parts: int) -> list[str]:
    """One credentials JSON per process (the format ``python -m simulators run`` reads),
    receivers dealt round-robin."""
    ids = sorted(credentials)
    paths = []
    for i in range(parts):
        path = workdir / f"credentials-{i}.json"
        path.write_text(json.dumps({rid: credentials[rid] for rid in ids[i::parts]}))
        paths.append(str(path))
    return paths


# --- processes: limits, memory, CPU ---------------------------------------------------------

def raise_nofile(want: int = NOFILE) -> int:
    """Raise this process's open-file limit to ``want`` (as far as it is allowed); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go up to it
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_files_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) from /proc/<pid>/status, and from smaps_rollup Pss and the private
    pages (USS: what the process alone holds, steadier than PSS when other processes come and go
    sharing its libraries), in KiB (0 for a field that cannot be read)."""
    out = {"rss": 0, "hwm": 0, "pss": 0, "uss": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1])
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    out["uss"] += int(line.split()[1])
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    ticks = _stat_ticks(f"/proc/{pid}/stat")
    return 0.0 if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def _stat_ticks(path: str) -> int | None:
    try:
        with open(path) as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def thread_stat(pid: int, tid: int | None = None) -> str:
    """The /proc stat file of one thread of ``pid`` (its main thread by default), for a role of
    CpuSampler that is part of a process."""
    return f"/proc/{pid}/task/{tid or pid}/stat"


# (monotonic time, machine total ticks, machine idle ticks, {role: ticks})
Sample = tuple[float, int, int, dict[str, int]]


class CpuSampler(threading.Thread):
    """Samples the machine's counters (/proc/stat) and the CPU ticks of the benchmark's
    processes, grouped by role, every ``interval_s``; afterwards tells the CPU each role used in
    any window (linear interpolation between samples).

    ``roles``: role -> pids, or /proc stat paths (``thread_stat``). Roles named in ``parts`` are
    parts of another role (one thread of a process): they have ``seconds`` but are left out of
    ``cores`` and of 'other'."""

    def __init__(self, roles: dict[str, list[int] | list[str]], *, interval_s: float, deadline_s: float,
                 parts: Iterable[str] = ()) -> None:
        super().__init__(daemon=True)
        self.roles = {role: [p if isinstance(p, str) else f"/proc/{p}/stat" for p in paths]
                      for role, paths in roles.items()}
        self.parts = set(parts)
        self.samples: list[Sample] = []
        self.tick = os.sysconf("SC_CLK_TCK")
        self._interval_s = interval_s
        self._deadline = time.monotonic() + deadline_s
        self._stop_event = threading.Event()
        self._last: dict[str, int] = {}

    def run(self) -> None:
        while not self._stop_event.is_set() and time.monotonic() < self._deadline:
            self.sample()
            self._stop_event.wait(self._interval_s)
        self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def sample(self) -> None:
        now = time.monotonic()
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        roles = {role: sum(self._ticks(path) for path in paths) for role, paths in self.roles.items()}
        self.samples.append((now, sum(fields), fields[3] + fields[4], roles))

    def _ticks(self, path: str) -> int:
        ticks = _stat_ticks(path)
        if ticks is not None:
            self._last[path] = ticks
        return self._last.get(path, 0)  # gone: keep what it had used

    def _at(self, t: float, value: Callable[[Sample], float]) -> float:
        s = self.samples
        if t <= s[0][0]:
            return value(s[0])
        for a, b in zip(s, s[1:]):
            if a[0] <= t <= b[0]:
                w = (t - a[0]) / (b[0] - a[0]) if b[0] > a[0] else 0.0
                return value(a) + w * (value(b) - value(a))
        return value(s[-1])

    def seconds(self, role: str, start: float, end: float) -> float:
        """CPU seconds ``role`` used in [start, end]."""
        if len(self.samples) < 2:
            return 0.0
        return (self._at(end, lambda s: s[3][role]) - self._at(start, lambda s: s[3][role])) / self.tick

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used on average in [start, end], per role, by the whole machine and by the rest
        of it ('other': other work on a shared host)."""
        if len(self.samples) < 2 or end <= start:
            return {}
        wall = end - start
        total = self._at(end, lambda s: s[1]) - self._at(start, lambda s: s[1])
        idle = self._at(end, lambda s: s[2]) - self._at(start, lambda s: s[2])
        out = {"machine": (os.cpu_count() or 1) * (total - idle) / total if total > 0 else 0.0}
        whole = [role for role in self.roles if role not in self.parts]
        for role in whole:
            out[role] = self.seconds(role, start, end) / wall
        out["other"] = max(0.0, out["machine"] - sum(out[r] for r in whole))
        return out


# --- the machine ----------------------------------------------------------------------------

def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return sum(fields), fields[3] + fields[4]


def settle(max_wait: float) -> float:
    """Wait until the machine is nearly idle (or ``max_wait`` passed); return the busy cores
    seen last."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + max_wait
    while True:
        total0, idle0 = _cpu_times()
        time.sleep(0.5)
        total1, idle1 = _cpu_times()
        busy = ncpu * (1 - (idle1 - idle0) / max(1, total1 - total0))
        if busy < QUIET_MACHINE_CORES or time.monotonic() >= deadline:
            return busy


def wait_idle(max_wait: float, before: str) -> float:
    """``settle``, saying so when the machine stayed busy (``before``: what comes next)."""
    busy = settle(max_wait)
    if busy >= QUIET_MACHINE_CORES:
        print(f"(machine still busy: {busy:.2f} cores in use before {before})", flush=True)
    return busy


def library_version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def source_state(paths: Iterable[str] = ("fleet_service", "simulators", "broker")) -> str:
    """The commit the code under test is at, and whether the parts measured have local changes
    (read-only git commands; '?' outside a checkout)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *paths],
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    files = [line[3:] for line in changed if line.strip()]
    if len(files) > 6:
        return f"commit {head or '?'} with local changes in {len(files)} files ({', '.join(files[:4])}, …)"
    return f"commit {head or '?'}" + (f" with local changes in {', '.join(files)}" if files else "")


def machine(libraries: Iterable[str] = ("paho-mqtt", "aiomqtt", "pydantic", "SQLAlchemy")) -> dict[str, str]:
    """What a results section says about the machine, read at the start of a run."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    try:
        mosq = subprocess.run([mosquitto_path(), "-h"], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        mosq = "?"
    return {"nproc": str(os.cpu_count()), "cpu": model, "memory": mem,
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "mosquitto": mosq.replace("mosquitto version ", ""),
            "libraries": ", ".join(f"{name} {library_version(name)}" for name in libraries),
            "load": " ".join(f"{x:.2f}" for x in os.getloadavg()), "source": source_state()}


def machine_line(info: dict[str, str], *, mosquitto: bool = True, source: bool = False) -> str:
    """The '- machine: ...' line of a results section."""
    return (f"- machine: {info['nproc']} cores ({info['cpu']}), {info['memory']}; {info['python']}; "
            + (f"Mosquitto {info['mosquitto']}; " if mosquitto else "")
            + (f"{info['libraries']}; " if info["libraries"] else "") + f"load average at start {info['load']}"
            + (f"; source: {info['source']}" if source else ""))


# --- Mosquitto ------------------------------------------------------------------------------

# The production broker configuration; its "Tuning" section (queue and in-flight limits, Nagle
# off, ...) is what a benchmark's broker runs with unless told to use Mosquitto's defaults.
PRODUCTION_CONF = ROOT / "broker" / "mosquitto" / "mosquitto.conf"


def mosquitto_path() -> str:
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def production_tuning(path: Path = PRODUCTION_CONF) -> list[str]:
    """The option lines of the ``# --- Tuning`` section of the production mosquitto.conf."""
    lines: list[str] = []
    inside = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("# ---"):
            inside = line.startswith("# --- Tuning")
            continue
        if inside and line and not line.startswith("#"):
            lines.append(line)
    return lines


@dataclass
class BrokerAuth:
    passwd: Path
    acl: Path
    hashing_s: float
    service_password: str
    observer_password: str


def write_broker_files(directory: Path, credentials: dict[str, str], *, service_writes: bool = False,
                       observer_reads: Iterable[str] = ()) -> BrokerAuth:
    """The password file (plaintext, then hashed in place by ``mosquitto_passwd -U``) and the
    ACL: each receiver under its own topics, the service reads them all (and writes them with
    ``service_writes``: it publishes commands), the observer reads $SYS and ``observer_reads``."""
    import secrets

    directory.mkdir(parents=True, exist_ok=True)
    service_password, observer_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    passwd = directory / "passwd"
    lines = [f"{rid}:{password}" for rid, password in credentials.items()]
    lines += [f"{SERVICE_USER}:{service_password}", f"{OBSERVER_USER}:{observer_password}"]
    passwd.write_text("\n".join(lines) + "\n")
    passwd.chmod(0o600)
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    started = time.monotonic()
    subprocess.run([tool, "-U", str(passwd)], check=True, timeout=START_TIMEOUT_S,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hashing = time.monotonic() - started
    acl = directory / "acl"
    acl.write_text(
        "# every receiver: its own topics only (%u is the login)\n"
        "pattern readwrite loa/v1/rx/%u/#\n\n"
        f"user {SERVICE_USER}\n"
        f"topic {'readwrite' if service_writes else 'read'} loa/v1/rx/#\n\n"
        f"user {OBSERVER_USER}\n"
        "topic read $SYS/#\n"
        + "".join(f"topic read {topic}\n" for topic in observer_reads)
    )
    acl.chmod(0o600)
    return BrokerAuth(passwd, acl, hashing, service_password, observer_password)


@dataclass
class Broker:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    host: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_lines(self, word: str) -> int:
        path = self.directory / "mosquitto.log"
        if not path.exists():
            return 0
        with open(path, errors="replace") as f:
            return sum(1 for line in f if word in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_broker(directory: Path, auth: BrokerAuth | None = None, tuning: Iterable[str] = (), *,
                 sys_interval: int = SYS_INTERVAL_S) -> Broker:
    """A private Mosquitto on a free port of 127.0.0.1, as the current user, persistence off, its
    open-file limit raised as far as allowed: with ``auth`` its password file and ACL, else
    anonymous; ``tuning``: extra option lines; ``sys_interval`` 0: no $SYS."""
    from tests.support.ports import free_port, wait_for_port

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"user {getpass.getuser()}\n"
        f"log_dest file {directory / 'mosquitto.log'}\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
        "persistence false\n"
        + (f"allow_anonymous false\npassword_file {auth.passwd}\nacl_file {auth.acl}\n" if auth
           else "allow_anonymous true\n")
        + f"sys_interval {sys_interval}\n"
        + "".join(f"{line}\n" for line in tuning)
    )
    process = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, preexec_fn=raise_nofile)
    try:
        wait_for_port(port, timeout=30)
    except TimeoutError:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        err = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise RuntimeError(f"mosquitto did not start: {err}") from None
    return Broker(port, directory, process)


class SysObserver:
    """A paho client on the observer login that keeps the broker's $SYS/broker/# values, with the
    history of the counts worth one."""

    # The counts worth a history (the others are read at the end).
    TRACKED = ("clients/connected", "messages/received", "publish/messages/received", "publish/messages/dropped",
               "heap/current")

    def __init__(self, port: int, password: str) -> None:
        import paho.mqtt.client as mqtt

        self.values: dict[str, str] = {}
        self.history: dict[str, list[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=OBSERVER_USER,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.username_pw_set(OBSERVER_USER, password)
        self.client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe("$SYS/broker/#", qos=0)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            self.close()
            raise RuntimeError("observer: not subscribed to $SYS")

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        key = message.topic.removeprefix("$SYS/broker/")
        text = message.payload.decode(errors="replace")
        now = time.monotonic()
        with self._lock:
            self.values[key] = text
            if key in self.TRACKED:
                try:
                    self.history.setdefault(key, []).append((now, float(text.split()[0])))
                except (ValueError, IndexError):
                    pass

    def latest(self, key: str) -> float | None:
        with self._lock:
            points = self.history.get(key)
            return points[-1][1] if points else None

    def first_reaching(self, key: str, value: float) -> float | None:
        """Monotonic time of the first report of ``key`` ≥ ``value``."""
        with self._lock:
            for t, v in self.history.get(key, ()):
                if v >= value:
                    return t
        return None

    def at(self, key: str, t: float) -> float | None:
        """The last value of ``key`` reported at or before ``t``."""
        with self._lock:
            best = None
            for when, v in self.history.get(key, ()):
                if when > t:
                    break
                best = v
            return best

    def wait_for(self, key: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.latest(key) is not None:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- child processes ------------------------------------------------------------------------

def expect(events: Any, tag: str, timeout: float = START_TIMEOUT_S, watch: list[Any] | None = None) -> tuple[Any, ...]:
    """The next event from a child process (a tuple whose first item is its tag), which must be
    ``tag``; an ``("error", text)`` event raises; fails early if a watched process died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = events.get(timeout=0.5)
            break
        except queue.Empty:
            dead = [p for p in watch or [] if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"waiting for {tag}: {dead[0].name} exited with {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {tag}") from None
    if event[0] == "error":
        raise RuntimeError(event[1])
    if event[0] != tag:
        raise RuntimeError(f"expected {tag}, got {event!r}")
    return event


def report_failure(events: Any, what: str, exc: BaseException) -> None:
    """In a child process: tell the parent what failed, never leave it hanging."""
    import traceback

    events.put(("error", f"{what} failed: {exc!r}\n{traceback.format_exc()}"))


def join_all(processes: Iterable[Any], timeout: float = 30.0) -> None:
    for p in processes:
        p.join(timeout=timeout)
        if p.is_alive():
            p.terminate()
            p.join(timeout=10)


# --- the service (``loa serve``) ------------------------------------------------------------

def http_get(port: int, path: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any, float]:
    """(status, parsed JSON or None, seconds) of a GET on 127.0.0.1 (no proxy). Status 0: no
    answer (refused, timed out)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    started = time.monotonic()
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
            return response.status, json.loads(body), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, None, time.monotonic() - started
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None, time.monotonic() - started


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    api_port: int
    token: str
    log_path: Path
    database: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any, float]:
        return http_get(self.api_port, path, self.token, timeout)

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        code, body, _ = self.get("/api/v1/ingest/status", timeout)
        return body if code == 200 else None

    def log_count(self, word: str) -> int:
        if not self.log_path.exists():
            return 0
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if word in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # uvicorn's orderly shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_service(workdir: Path, registry: Registry, broker_port: int, service_password: str, *,
                  telemetry_interval: float, env: dict[str, str] | None = None,
                  python_module: str | None = None) -> Service:
    """``loa serve`` in its own process on a copy of the registry (an empty ledger), against the
    broker as an external one; returns once its MQTT side is connected. ``python_module``: run
    ``python -m MODULE serve ...`` instead (a wrapper such as bench.memtrace); ``env``: more
    environment."""
    from tests.support.ports import free_port, wait_for_port

    db = workdir / "service.db"
    copy_registry(registry, db)
    api_port = free_port()
    environment = dict(os.environ)
    environment.update({
        # The service runs the same source tree as the benchmark.
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "LOA_ENVIRONMENT": "local",
        "LOA_DATABASE_URL": f"sqlite:///{db}",
        "LOA_BROKER": "external",
        "LOA_MQTT_HOST": "127.0.0.1",
        "LOA_MQTT_PORT": str(broker_port),
        "LOA_MQTT_USERNAME": SERVICE_USER,
        "LOA_MQTT_PASSWORD": service_password,
        "LOA_API_HOST": "127.0.0.1",
        "LOA_API_PORT": str(api_port),
        "LOA_TELEMETRY_INTERVAL_S": str(telemetry_interval),
        **(env or {}),
    })
    loa = Path(sys.executable).with_name("loa")
    if python_module:
        command = [sys.executable, "-m", python_module]
    elif loa.exists():
        command = [str(loa)]
    else:
        command = [sys.executable, "-c", "from fleet_service.cli import app; app()"]
    log_path = workdir / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, "serve", "--port", str(api_port)], cwd=workdir, env=environment,
                                   stdout=log, stderr=subprocess.STDOUT)
    service = Service(process, api_port, registry.token, log_path, db)
    try:
        wait_for_port(api_port, timeout=START_TIMEOUT_S)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited ({process.returncode})")
            status = service.status()
            if status and status.get("mqtt_connected"):
                return service
            time.sleep(0.5)
        raise RuntimeError("the service did not connect to the broker")
    except BaseException as exc:
        service.stop()
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"service not ready: {exc}\n{tail}") from None


class ServicePoller(threading.Thread):
    """Polls the service's ingest status in the background (the API may answer slowly while the
    service is busy) and keeps every answer with its time."""

    def __init__(self, service: Service, deadline_s: float) -> None:
        super().__init__(daemon=True)
        self.service = service
        self.history: list[tuple[float, dict[str, Any]]] = []
        self.failures = 0
        self.slowest_s = 0.0
        self._stop_event = threading.Event()
        self._deadline = time.monotonic() + deadline_s

    def run(self) -> None:
        while not self._stop_event.is_set() and time.monotonic() < self._deadline:
            started = time.monotonic()
            code, body, took = self.service.get("/api/v1/ingest/status", 10.0)
            self.slowest_s = max(self.slowest_s, took)
            if code == 200 and body is not None:
                self.history.append((time.monotonic(), body))
            else:
                self.failures += 1
            self._stop_event.wait(max(0.0, SERVICE_POLL_S - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=15)

    def latest(self) -> dict[str, Any] | None:
        return self.history[-1][1] if self.history else None

    def first(self, predicate: Callable[[dict[str, Any]], bool]) -> float | None:
        for t, body in list(self.history):
            if predicate(body):
                return t
        return None

    def caught_up(self, receivers: int) -> bool:
        """Every receiver's birth in the ledger, nothing waiting."""
        latest = self.latest()
        return bool(latest) and latest["counters"].get("ledger_written", 0) >= receivers \
            and latest["ledger_backlog"] == 0


# --- a virtual fleet in simulator processes -------------------------------------------------

@dataclass
class FleetParams:
    """How the receivers of ``simulators.fleet.Fleet`` behave (the same in every process)."""

    port: int
    credentials: list[str]          # one credentials file per process (split_credentials)
    keepalive: int = 60
    telemetry_interval: float = 60.0
    attach_delay: float = 5.0       # power-on to connect: uniform in [0, this]
    run_timeout: float = 3600.0


def _simulator_main(index: int, params: FleetParams, events: Any, go: Any, stop: Any) -> None:
    try:
        limit = raise_nofile()
        import logging

        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        from simulators.fleet import Fleet  # noqa: F401  (imported before the memory baseline)

        asyncio.run(_simulate(index, params, events, go, stop, limit))
    except BaseException as exc:  # report, never hang the parent
        report_failure(events, f"simulator {index}", exc)


async def _simulate(index: int, params: FleetParams, events: Any, go: Any, stop: Any, limit: int) -> None:
    from simulators.fleet import Fleet

    pid = os.getpid()
    base = memory_kib(pid)
    credentials = json.loads(Path(params.credentials[index]).read_text())
    fleet = Fleet("127.0.0.1", params.port, credentials, keepalive=params.keepalive,
                  telemetry_interval=params.telemetry_interval, attach_delay=(0.0, params.attach_delay),
                  seed=SEED + index)
    built = memory_kib(pid)
    events.put(("sim-ready", index, {"receivers": len(credentials), "base": base, "built": built, "nofile": limit}))
    if not await asyncio.to_thread(go.wait, START_TIMEOUT_S):
        raise RuntimeError("never told to start")
    loop = asyncio.get_running_loop()
    lag = {"max": 0.0}

    async def probe() -> None:
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lag["max"] = max(lag["max"], loop.time() - before - LAG_PROBE_S)

    prober = asyncio.create_task(probe())
    receivers = fleet.receivers
    truth = fleet.ground_truth
    await fleet.start()
    deadline = time.monotonic() + params.run_timeout
    all_up_at: float | None = None
    try:
        while time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(SIMULATOR_STATUS_S)
            up = sum(1 for rid in receivers if truth.is_up(rid))
            if all_up_at is None and up == len(receivers):
                all_up_at = time.time()
            events.put(("sim-status", index, {
                "up": up, "all_up_at": all_up_at,
                "connects": sum(rx.connects for rx in receivers.values()),
                "refused": sum(rx.refused for rx in receivers.values()),
                "births": sum(rx.births for rx in receivers.values()),
                "telemetry": sum(rx.telemetry_sent for rx in receivers.values()),
                "lag_max": lag["max"], "memory": memory_kib(pid),
            }))
            lag["max"] = 0.0
    finally:
        prober.cancel()
        # Each receiver's first "up": wall-clock time just after it handed its first birth to
        # its connection (simulators.receiver: _mark_up after _publish_birth).
        first_up: dict[str, float] = {}
        downs: Counter[str] = Counter()
        for rid in receivers:
            ups = [tr for tr in truth.transitions(rid) if tr.up]
            if ups:
                first_up[rid] = ups[0].t
            downs.update(tr.cause for tr in truth.transitions(rid) if not tr.up)
        errors = Counter(rx.last_error.split(":", 1)[0] for rx in receivers.values() if rx.last_error)
        await fleet.stop(clean=False)
    events.put(("sim-done", index, {"first_up": first_up, "errors": dict(errors), "downs": dict(downs)}))


class SimulatedFleet:
    """``processes`` simulator processes (spawned), each a ``simulators.fleet.Fleet`` over its
    share of the credentials; all power on at ``go()``. Their reports arrive through one queue:
    ``poll()`` keeps the latest status of each; ``finish()`` stops them and collects each
    receiver's first time up, last errors and losses."""

    def __init__(self, params: FleetParams, processes: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self._go, self._stop = ctx.Event(), ctx.Event()
        self.processes = [ctx.Process(target=_simulator_main, args=(i, params, self.events, self._go, self._stop),
                                      daemon=True, name=f"simulator-{i}") for i in range(processes)]
        self.ready: dict[int, dict[str, Any]] = {}
        self.status: dict[int, dict[str, Any]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.go_wall = self.go_mono = 0.0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def start(self) -> None:
        """Start the processes and wait until each has built its receivers (not connected)."""
        for p in self.processes:
            p.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.ready) < len(self.processes):
            event = self._next(deadline)
            if event[0] == "sim-ready":
                self.ready[event[1]] = event[2]

    def go(self) -> None:
        self.go_wall, self.go_mono = time.time(), time.monotonic()
        self._go.set()

    def _next(self, deadline: float) -> tuple[Any, ...]:
        while True:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in self.processes if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    raise RuntimeError(f"simulator process exited with {dead[0].exitcode}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError("simulator processes did not answer") from None
                continue
            if event[0] == "error":
                raise RuntimeError(event[1])
            return event

    def _keep(self, event: tuple[Any, ...]) -> None:
        if event[0] == "sim-status":
            self.status[event[1]] = event[2]
        elif event[0] == "sim-done":
            self.done[event[1]] = event[2]

    def poll(self) -> None:
        """Take the reports that arrived."""
        for _ in range(10_000):
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "error":
                raise RuntimeError(event[1])
            self._keep(event)

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.status.values())

    def lag(self) -> float:
        return max([0.0] + [s["lag_max"] for s in self.status.values()])

    def finish(self) -> None:
        """Stop the receivers and wait for each process's last report."""
        self._stop.set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.done) < len(self.processes):
            self._keep(self._next(deadline))

    def first_up(self) -> dict[str, float]:
        """Each receiver's first time up (wall clock), once finished."""
        return {rid: t for d in self.done.values() for rid, t in d["first_up"].items()}

    def close(self) -> None:
        self._stop.set()
        join_all(self.processes)


# --- py-spy ---------------------------------------------------------------------------------

def attach_py_spy(pid: int, out: str, *, rate: int, duration_s: float, gil: bool = False, idle: bool = False,
                  settle_s: float = 1.5) -> subprocess.Popen[bytes] | None:
    """py-spy (on PATH or $PY_SPY) recording ``pid`` as collapsed stacks to ``out``; waits
    ``settle_s`` for it to attach. ``idle``: also the samples of threads that wait (on a lock, a
    database, the network), to see where time goes that is not CPU. None when py-spy is not
    found."""
    exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if not exe:
        print("py-spy not found (put it on PATH or set PY_SPY); not sampled", flush=True)
        return None
    spy = subprocess.Popen([exe, "record", "-p", str(pid), "-r", str(rate), *(["--gil"] if gil else []),
                            *(["--idle"] if idle else []), "-f", "raw",
                            "-o", out, "--nonblocking", "-d", str(int(duration_s))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(settle_s)
    return spy


def wait_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    """Let py-spy finish (it stops when its process exits), or stop it."""
    if spy is None:
        return
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.terminate()
        spy.wait(timeout=10)


# --- command line ---------------------------------------------------------------------------

def add_fleet_options(parser: argparse.ArgumentParser, *, receivers: int) -> None:
    """The virtual fleet's options (FleetParams): how many, in how many processes, how they behave."""
    parser.add_argument("--receivers", type=int, default=receivers,
                        help=f"receivers (default {receivers}; the goal is 10000)")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--keepalive", type=int, default=60, help="receivers' MQTT keepalive, s (default 60)")
    parser.add_argument("--telemetry-interval", type=float, default=60.0,
                        help="seconds between telemetry reports (default 60)")
    parser.add_argument("--attach-delay", type=float, default=5.0,
                        help="receivers power on together and connect after a modem attach delay uniform in "
                             "[0, this] s (default 5, the field value)")


def add_run_options(parser: argparse.ArgumentParser, *, settle: float, keep: bool = True) -> None:
    """--settle, --append and (with ``keep``) --keep, as every benchmark has them."""
    parser.add_argument("--settle", type=float, default=settle,
                        help=f"before each run wait up to this many seconds for the machine to be idle (default {settle:g})")
    parser.add_argument("--append", metavar="MARKDOWN",
                        help="append the results section to this file (bench/RESULTS.md: full runs only)")
    if keep:
        parser.add_argument("--keep", metavar="DIR", help="keep the work directory (logs, databases) here")


# --- the report -----------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def command_line(module: str, argv: list[str] | None, *, py_spy: bool = False) -> str:
    """The command as run, for the results section (``argv`` None: this process's)."""
    command = " ".join([f"python -m {module}", *(sys.argv[1:] if argv is None else argv)])
    if py_spy and os.environ.get("PY_SPY"):
        command = f"PY_SPY={os.environ['PY_SPY']} {command}"
    return command


def results_section(title: str, script: str, command: str, *parts: str | Iterable[str],
                    append: str | Path | None = None) -> str:
    """The markdown section of one run: '## <today> — title (`bench/script`)', the command, then
    ``parts`` (each a block or lines of one, separated by blank lines). Printed, and appended to
    ``append`` if given (bench/RESULTS.md: full runs only)."""
    blocks = [f"## {date.today().isoformat()} — {title} (`bench/{script}`)", f"Command: `{command}`"]
    for part in parts:
        text = part if isinstance(part, str) else "\n".join(part)
        if text:
            blocks.append(text)
    snippet = "\n\n".join(blocks) + "\n"
    print("\n" + snippet, flush=True)
    if append:
        with open(append, "a") as f:
            f.write("\n" + snippet)
        print(f"appended to {append}", flush=True)
    return snippet
