"""Receivers connected at once to one Mosquitto and one service on this machine.

One invocation registers and provisions ``--receivers`` receivers in a SQLite registry, gives
Mosquitto a password file and a per-receiver ACL made from the same passwords, and runs the same
virtual fleet (``simulators.fleet.Fleet`` in ``--simulators`` processes) twice, each time
against a fresh private Mosquitto:

- **raw**: broker and simulators only, the baseline;
- **service**: the same, plus ``loa serve`` in its own process (``LOA_BROKER=external``), started
  before the receivers power on.

For each it reports how many receivers the broker counts as connected (``$SYS``), how long the
fleet took to connect, the resident memory of the broker, the service and the simulators before
and after (per receiver), and the cores each used during the connect storm and while steady.

    python -m bench.connections                       # 2,000 receivers, ~4 min
    python -m bench.connections --receivers 10000 --append bench/RESULTS.md

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import multiprocessing as mp
import os
import queue
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from bench.cpu import ProcSampler

# --- tuning ---------------------------------------------------------------------------------

RECEIVER_PREFIX = "rx"
# Receivers per station in the registry (a commune station has 10-20).
RECEIVERS_PER_STATION = 20
SEED = 20261126
SERVICE_USER = "loa-service"
# A second broker login that may read $SYS only: counts connected clients for the benchmark.
OBSERVER_USER = "bench-observer"
# File descriptors for the broker and the simulator processes (one socket per receiver each).
NOFILE = 65536
# Mosquitto publishes $SYS this often (seconds): the resolution of the broker's connected count.
SYS_INTERVAL_S = 1
# Each simulator process reports its receivers' state this often.
SIMULATOR_STATUS_S = 1.0
# The service's ingest status is polled this often (one small API request).
SERVICE_POLL_S = 1.0
# CPU and memory of every process are sampled this often.
SAMPLE_INTERVAL_S = 0.5
# Progress lines while the fleet connects.
PROGRESS_EVERY_S = 5.0
# Upper bounds on single waits: a process starting, a broker or service getting ready.
START_TIMEOUT_S = 180.0
# After the service connected to the broker, wait this long before reading its memory baseline.
SERVICE_SETTLE_S = 5.0
# A simulator's event loop is probed this often; the probe's lateness is its lag.
LAG_PROBE_S = 0.1
# Before each run, wait (at most --settle seconds) until the rest of the machine uses less than
# this many cores.
QUIET_MACHINE_CORES = 0.3

RAW, SERVICE = "raw", "service"


def receiver_ids(count: int) -> list[str]:
    return [f"{RECEIVER_PREFIX}-{i:05d}" for i in range(count)]


# --- memory and limits ----------------------------------------------------------------------

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


def open_files_limit(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    return line.split()[3]
    except OSError:
        pass
    return "?"


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


# --- registry, passwords, ACL ---------------------------------------------------------------

@dataclass
class Registry:
    path: Path
    credentials: dict[str, str]
    token: str
    seconds: float


def make_registry(workdir: Path, receivers: int) -> Registry:
    """A migrated SQLite registry with ``receivers`` registered and provisioned through the
    registry service (one province, one district, a station per RECEIVERS_PER_STATION
    receivers), and an admin with an API token for the status endpoints."""
    from fleet_service.auth import service as auth
    from fleet_service.auth.models import Role
    from fleet_service.db import make_engine, make_sessionmaker, session_scope
    from fleet_service.migrations import upgrade
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
            stations = [
                registry.create_station(session, StationCreate(region_id=district.id, name=f"Đài {i}")).id
                for i in range(max(1, receivers // RECEIVERS_PER_STATION))
            ]
            for i, rid in enumerate(receiver_ids(receivers)):
                registry.register_receiver(session, ReceiverCreate(
                    id=rid, hardware_id=f"bench-hw-{i:05d}", station_id=stations[i % len(stations)]))
                credentials[rid] = registry.provision(session, rid).mqtt_password
            user = auth.create_user(session, "bench-admin", role=Role.ADMIN, password=None)
            _, token = auth.issue_token(session, user.id, "bench")
    finally:
        engine.dispose()
    return Registry(path, credentials, token, time.monotonic() - started)


def write_broker_files(directory: Path, credentials: dict[str, str], service_password: str,
                       observer_password: str) -> tuple[Path, Path, float]:
    """The password file (plaintext, then hashed in place by ``mosquitto_passwd -U``) and the
    ACL: each receiver under its own topics, the service reads them all, the observer reads
    $SYS. Returns (password file, ACL file, seconds spent hashing)."""
    directory.mkdir(parents=True, exist_ok=True)
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
        "topic read loa/v1/rx/#\n\n"
        f"user {OBSERVER_USER}\n"
        "topic read $SYS/#\n"
    )
    acl.chmod(0o600)
    return passwd, acl, hashing


# --- why not the dynamic-security plugin ----------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def dynsec_probe(workdir: Path, logins: int, target: int, block: int = 200) -> dict[str, Any]:
    """Create ``logins`` receiver logins through Mosquitto's dynamic-security plugin (the
    production config and ``MosquittoDynsec.add_receiver``, as the service does), timing each
    block; fit time per login against logins already present and extrapolate the total for
    ``target`` logins."""
    from tests.support.mosquitto_production import production_mosquitto

    blocks: list[tuple[int, float]] = []  # (logins present at the block's middle, s per login)
    started = time.monotonic()
    with production_mosquitto(workdir / "dynsec") as broker:
        pid = broker.server.process.pid
        broker_cpu = _cpu_seconds(pid)
        last = time.monotonic()
        for i in range(logins):
            broker.accounts.add_receiver(f"{RECEIVER_PREFIX}-{i:05d}", secrets.token_urlsafe(20))
            if (i + 1) % block == 0 or i + 1 == logins:
                now = time.monotonic()
                size = (i % block) + 1
                blocks.append((i + 1 - size // 2, (now - last) / size))
                last = now
        file_bytes = broker.dynsec_file.stat().st_size
        broker_cpu = _cpu_seconds(pid) - broker_cpu
    total = time.monotonic() - started
    xs, ys = [b[0] for b in blocks], [b[1] for b in blocks]
    if len(blocks) >= 2:
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
        intercept = my - slope * mx
    else:
        slope, intercept = 0.0, ys[0] if ys else 0.0
    # Sum of intercept + slope·k over k = 0 .. target-1.
    projected = intercept * target + slope * target * (target - 1) / 2
    return {"logins": logins, "seconds": total, "first_ms": 1e3 * ys[0], "last_ms": 1e3 * ys[-1],
            "slope_us": 1e6 * slope, "file_mb": file_bytes / 1e6, "broker_cpu_s": broker_cpu, "target": target, "projected_s": projected}


# --- Mosquitto ------------------------------------------------------------------------------

# The production broker configuration; its "Tuning" section (queue and in-flight limits, Nagle
# off, ...) is what the benchmark's broker runs with unless told to use Mosquitto's defaults.
PRODUCTION_CONF = Path(__file__).resolve().parents[1] / "broker" / "mosquitto" / "mosquitto.conf"


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
class Broker:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

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


def start_broker(directory: Path, passwd: Path, acl: Path, tuning: list[str]) -> Broker:
    from tests.support.mosquitto import MOSQUITTO
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
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {acl}\n"
        f"sys_interval {SYS_INTERVAL_S}\n"
        + "".join(f"{line}\n" for line in tuning)
    )
    process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               preexec_fn=raise_nofile)
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
    history of the connected-clients count."""

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

    # The counts worth a history (the others are read at the end).
    TRACKED = ("clients/connected", "messages/received", "publish/messages/received", "publish/messages/dropped",
               "heap/current")

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


# --- the service ----------------------------------------------------------------------------

def _http_get(port: int, path: str, token: str | None = None, timeout: float = 10.0) -> tuple[int, Any, float]:
    """(status, parsed JSON or None, seconds). Status 0: no answer (refused, timed out)."""
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

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, timeout: float = 5.0) -> dict[str, Any] | None:
        code, body, _ = _http_get(self.api_port, "/api/v1/ingest/status", self.token, timeout)
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


def start_service(workdir: Path, registry: Registry, broker_port: int, service_password: str,
                  cfg: argparse.Namespace) -> Service:
    """``loa serve`` in its own process on a copy of the registry (an empty ledger), against the
    broker as an external one; returns once its MQTT side is connected."""
    from tests.support.ports import free_port, wait_for_port

    db = workdir / "service.db"
    shutil.copyfile(registry.path, db)
    api_port = free_port()
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env.update({
        # The service runs the same source tree as this benchmark.
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
        "LOA_ENVIRONMENT": "local",
        "LOA_DATABASE_URL": f"sqlite:///{db}",
        "LOA_BROKER": "external",
        "LOA_MQTT_HOST": "127.0.0.1",
        "LOA_MQTT_PORT": str(broker_port),
        "LOA_MQTT_USERNAME": SERVICE_USER,
        "LOA_MQTT_PASSWORD": service_password,
        "LOA_API_HOST": "127.0.0.1",
        "LOA_API_PORT": str(api_port),
        "LOA_TELEMETRY_INTERVAL_S": str(cfg.telemetry_interval),
    })
    loa = Path(sys.executable).with_name("loa")
    command = [str(loa)] if loa.exists() else [sys.executable, "-c", "from fleet_service.cli import app; app()"]
    log_path = workdir / "service.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, "serve", "--port", str(api_port)], cwd=workdir, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    service = Service(process, api_port, registry.token, log_path)
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
            code, body, took = _http_get(self.service.api_port, "/api/v1/ingest/status", self.service.token, 10.0)
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

    def first(self, predicate: Any) -> float | None:
        for t, body in list(self.history):
            if predicate(body):
                return t
        return None


# --- simulator processes --------------------------------------------------------------------

def _simulator_main(index: int, params: dict[str, Any], events: Any, go: Any, stop: Any) -> None:
    try:
        limit = raise_nofile()
        import logging

        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        from simulators.fleet import Fleet  # noqa: F401  (imported before the memory baseline)

        asyncio.run(_simulate(index, params, events, go, stop, limit))
    except BaseException as exc:  # report, never hang the parent
        import traceback

        events.put(("error", f"simulator {index} failed: {exc!r}\n{traceback.format_exc()}"))


async def _simulate(index: int, params: dict[str, Any], events: Any, go: Any, stop: Any, limit: int) -> None:
    from simulators.fleet import Fleet

    pid = os.getpid()
    base = memory_kib(pid)
    credentials = json.loads(Path(params["credentials"][index]).read_text())
    fleet = Fleet(
        "127.0.0.1", params["port"], credentials,
        keepalive=params["keepalive"], telemetry_interval=params["telemetry_interval"],
        attach_delay=(0.0, params["attach_delay"]), seed=SEED + index,
    )
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
    deadline = time.monotonic() + params["run_timeout"]
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
        first_up: list[float] = []
        downs: Counter[str] = Counter()
        for rid in receivers:
            ups = [tr for tr in truth.transitions(rid) if tr.up]
            if ups:
                first_up.append(ups[0].t)
            downs.update(tr.cause for tr in truth.transitions(rid) if not tr.up)
        errors = Counter(rx.last_error.split(":", 1)[0] for rx in receivers.values() if rx.last_error)
        await fleet.stop(clean=False)
    events.put(("sim-done", index, {"first_up": first_up, "errors": dict(errors), "downs": dict(downs)}))


# --- CPU accounting -------------------------------------------------------------------------

class CpuSampler(ProcSampler):
    """The machine's CPU and the benchmark's processes' by role (pids)."""

    def __init__(self, roles: dict[str, list[int]], deadline_s: float) -> None:
        super().__init__({role: [f"/proc/{pid}/stat" for pid in pids] for role, pids in roles.items()},
                         interval_s=SAMPLE_INTERVAL_S, deadline_s=deadline_s)

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Cores used on average in [start, end] (the nearest samples inside it), per role, by the
        whole machine and by the rest of it ('other')."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        wall = b[0] - a[0]
        ncpu = os.cpu_count() or 1
        total, idle = b[1] - a[1], b[2] - a[2]
        out = {"machine": ncpu * (total - idle) / total if total > 0 else 0.0}
        for role in self.roles:
            out[role] = (b[3][role] - a[3][role]) / self.tick / wall
        out["other"] = max(0.0, out["machine"] - sum(out[r] for r in self.roles))
        return out


# --- one run --------------------------------------------------------------------------------

@dataclass
class RunResult:
    mode: str
    receivers: int
    ok: bool = False
    note: str = ""
    broker_connected: int = 0          # $SYS clients/connected minus the benchmark's own clients
    broker_connected_min_steady: int = 0
    sims_up: int = 0
    connects: int = 0
    refused: int = 0
    t_broker_all: float | None = None  # seconds from power-on to the broker counting all N
    t_sims_all: float | None = None    # ... to the last receiver's first "up"
    t_service_births: float | None = None
    t_service_ledger: float | None = None
    connect_percentiles: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    sim_memory: dict[str, int] = field(default_factory=dict)
    cpu_ramp: dict[str, float] = field(default_factory=dict)
    cpu_steady: dict[str, float] = field(default_factory=dict)
    ramp_s: float = 0.0
    steady_s: float = 0.0
    broker_msgs_steady: float = 0.0     # packets of any kind received per second
    broker_publish_steady: float = 0.0  # PUBLISH packets received per second
    broker_dropped: int = 0             # publishes Mosquitto dropped (queue limits)
    sim_lag_ramp: float = 0.0
    sim_lag_steady: float = 0.0
    sim_errors: dict[str, int] = field(default_factory=dict)
    sim_downs: dict[str, int] = field(default_factory=dict)
    telemetry_sent: int = 0
    births_sent: int = 0
    broker_log: dict[str, int] = field(default_factory=dict)
    broker_nofile: str = "?"
    sims_nofile: int = 0
    service: dict[str, Any] = field(default_factory=dict)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def split_credentials(workdir: Path, credentials: dict[str, str], parts: int) -> list[str]:
    """One credentials JSON per simulator process (the format ``python -m simulators run``
    reads), receivers dealt round-robin."""
    ids = sorted(credentials)
    paths = []
    for i in range(parts):
        path = workdir / f"credentials-{i}.json"
        path.write_text(json.dumps({rid: credentials[rid] for rid in ids[i::parts]}, indent=0))
        paths.append(str(path))
    return paths


def run_mode(mode: str, cfg: argparse.Namespace, workdir: Path, registry: Registry, passwd: Path, acl: Path,
             service_password: str, observer_password: str, cred_files: list[str]) -> RunResult:
    n = cfg.receivers
    result = RunResult(mode, n)
    rundir = workdir / mode
    rundir.mkdir(parents=True, exist_ok=True)
    broker = start_broker(rundir / "broker", passwd, acl, cfg.tuning)
    result.broker_nofile = open_files_limit(broker.pid)
    observer: SysObserver | None = None
    service: Service | None = None
    poller: ServicePoller | None = None
    sampler: CpuSampler | None = None
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    go, stop = ctx.Event(), ctx.Event()
    sims: list[Any] = []
    budget = cfg.connect_timeout + cfg.steady + 2 * START_TIMEOUT_S
    try:
        observer = SysObserver(broker.port, observer_password)
        if not observer.wait_for("clients/connected", 10):
            raise RuntimeError("no $SYS/broker/clients/connected from the broker")
        own_clients = 1
        if mode == SERVICE:
            service = start_service(rundir, registry, broker.port, service_password, cfg)
            own_clients += 1
            time.sleep(SERVICE_SETTLE_S)
            result.memory["service_before"] = memory_kib(service.pid)
            code, _, _ = _http_get(service.api_port, "/api/v1/ingest/status")
            result.service["status_without_token"] = code

        params = {"port": broker.port, "credentials": cred_files, "keepalive": cfg.keepalive,
                  "telemetry_interval": cfg.telemetry_interval, "attach_delay": cfg.attach_delay,
                  "run_timeout": budget}
        sims = [ctx.Process(target=_simulator_main, args=(i, params, events, go, stop), daemon=True)
                for i in range(cfg.simulators)]
        for p in sims:
            p.start()
        ready: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(ready) < len(sims):
            event = _next_event(events, deadline, sims)
            if event[0] == "sim-ready":
                ready[event[1]] = event[2]
        result.sims_nofile = min(r["nofile"] for r in ready.values())
        result.memory["broker_before"] = memory_kib(broker.pid)
        heap_before = observer.latest("heap/current")

        roles = {"broker": [broker.pid], "simulators": [p.pid for p in sims]}
        if service is not None:
            roles["service"] = [service.pid]
        sampler = CpuSampler(roles, budget + 60)
        sampler.start()
        if service is not None:
            poller = ServicePoller(service, budget + 60)
            poller.start()
        time.sleep(2 * SAMPLE_INTERVAL_S)

        print(f"[{mode}] {n} receivers in {len(sims)} simulator processes power on "
              f"(attach delay 0–{cfg.attach_delay:g} s)", flush=True)
        go_wall, go_mono = time.time(), time.monotonic()
        go.set()
        status: dict[int, dict[str, Any]] = {}
        done: dict[int, dict[str, Any]] = {}
        lag_ramp = 0.0
        next_progress = go_mono + PROGRESS_EVERY_S
        ready_at: float | None = None
        connect_deadline = go_mono + cfg.connect_timeout

        def service_caught_up() -> bool:
            if poller is None:
                return True
            latest = poller.latest()
            return bool(latest) and latest["counters"].get("ledger_written", 0) >= n and latest["ledger_backlog"] == 0

        # The connect storm: until the simulators, the broker and the service all have all N.
        while time.monotonic() < connect_deadline:
            _drain(events, status, done, sims)
            lag_ramp = max([lag_ramp] + [s["lag_max"] for s in status.values()])
            up = sum(s["up"] for s in status.values())
            connected = int((observer.latest("clients/connected") or 0) - own_clients)
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                print(progress_line(mode, now - go_mono, up, connected, status, poller, sampler), flush=True)
            if up >= n and connected >= n and service_caught_up():
                ready_at = now
                break
            time.sleep(0.25)
        result.ramp_s = (ready_at or time.monotonic()) - go_mono
        result.cpu_ramp = sampler.cores(go_mono, ready_at or time.monotonic())
        result.sim_lag_ramp = lag_ramp
        if ready_at is None:
            result.note = f"not all connected after {cfg.connect_timeout:g} s"
            print(f"[{mode}] {result.note}", flush=True)

        # Steady: everyone connected and reporting.
        steady_start = time.monotonic()
        steady_end = steady_start + cfg.steady
        min_connected = None
        lag_steady = 0.0
        print(f"[{mode}] steady for {cfg.steady:g} s", flush=True)
        while time.monotonic() < steady_end:
            _drain(events, status, done, sims)
            lag_steady = max([lag_steady] + [s["lag_max"] for s in status.values()])
            connected = observer.latest("clients/connected")
            if connected is not None and time.monotonic() > steady_start + 2 * SYS_INTERVAL_S:
                c = int(connected - own_clients)
                min_connected = c if min_connected is None else min(min_connected, c)
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                up = sum(s["up"] for s in status.values())
                print(progress_line(mode, now - go_mono, up, int((connected or 0) - own_clients), status, poller,
                                    sampler), flush=True)
            time.sleep(0.25)
        steady_stop = time.monotonic()
        _drain(events, status, done, sims)
        result.steady_s = steady_stop - steady_start
        result.cpu_steady = sampler.cores(steady_start, steady_stop)
        result.sim_lag_steady = lag_steady
        for key, attr in (("messages/received", "broker_msgs_steady"),
                          ("publish/messages/received", "broker_publish_steady")):
            counts = [observer.at(key, t) for t in (steady_start, steady_stop)]
            if counts[0] is not None and counts[1] is not None:
                setattr(result, attr, (counts[1] - counts[0]) / result.steady_s)
        result.broker_dropped = int(observer.latest("publish/messages/dropped") or 0)

        # Memory at steady state, before anything else asks the processes for work.
        result.memory["broker_after"] = memory_kib(broker.pid)
        heap_after = observer.latest("heap/current")
        if heap_before is not None and heap_after is not None:
            result.memory["broker_heap"] = {"before": int(heap_before // 1024), "after": int(heap_after // 1024)}
        sim_after = [memory_kib(p.pid) for p in sims]
        result.sim_memory = {
            "base": sum(r["base"]["rss"] for r in ready.values()),
            "built": sum(r["built"]["rss"] for r in ready.values()),
            "after": sum(m["rss"] for m in sim_after),
            "after_pss": sum(m["pss"] for m in sim_after),
        }
        connected_now = observer.latest("clients/connected")
        result.broker_connected = int((connected_now or 0) - own_clients)
        result.broker_connected_min_steady = min_connected if min_connected is not None else result.broker_connected
        result.sims_up = sum(s["up"] for s in status.values())
        result.connects = sum(s["connects"] for s in status.values())
        result.refused = sum(s["refused"] for s in status.values())
        result.telemetry_sent = sum(s["telemetry"] for s in status.values())
        result.births_sent = sum(s.get("births", 0) for s in status.values())
        t_broker = observer.first_reaching("clients/connected", n + own_clients)
        result.t_broker_all = t_broker - go_mono if t_broker is not None else None
        if service is not None and poller is not None:
            result.memory["service_after"] = memory_kib(service.pid)
            t_births = poller.first(lambda b: b["counters"].get("transitions", 0) >= n)
            t_ledger = poller.first(lambda b: b["counters"].get("ledger_written", 0) >= n and b["ledger_backlog"] == 0)
            result.t_service_births = t_births - go_mono if t_births is not None else None
            result.t_service_ledger = t_ledger - go_mono if t_ledger is not None else None
            poller.stop()
            result.service.update(service_facts(service, poller))

        # Stop the receivers and collect their connect times.
        stop.set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(done) < len(sims):
            event = _next_event(events, deadline, sims)
            if event[0] == "sim-done":
                done[event[1]] = event[2]
            elif event[0] == "sim-status":
                status[event[1]] = event[2]
        first_up = [t - go_wall for d in done.values() for t in d["first_up"]]
        last_up = [s["all_up_at"] for s in status.values()]
        result.t_sims_all = (max(last_up) - go_wall) if last_up and None not in last_up else None
        result.connect_percentiles = {"p50": _percentile(first_up, 0.5), "p90": _percentile(first_up, 0.9),
                                      "p99": _percentile(first_up, 0.99), "max": max(first_up, default=float("nan"))}
        for d in done.values():
            for k, v in d["errors"].items():
                result.sim_errors[k] = result.sim_errors.get(k, 0) + v
            for k, v in d["downs"].items():
                result.sim_downs[k] = result.sim_downs.get(k, 0) + v
        result.broker_log = {"refused": broker.log_lines("not authorised"),
                             "dropping": broker.log_lines("are being dropped"),
                             "fd_exhausted": broker.log_lines("socket count has been exceeded"),
                             # Debian's Mosquitto checks each connection with libwrap, which must
                             # open /etc/hosts.allow: with no descriptor left it denies.
                             "tcpd_denied": broker.log_lines("denied access by tcpd"),
                             "timeouts": broker.log_lines("exceeded timeout"),
                             "errors": broker.log_lines("Error")}
        result.ok = ready_at is not None and result.broker_connected_min_steady >= n
        if not result.ok and not result.note:
            result.note = f"the broker counted {result.broker_connected_min_steady} connected at worst while steady"
        return result
    finally:
        stop.set()
        if poller is not None:
            poller.stop()
        if sampler is not None:
            sampler.stop()
        for p in sims:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
                p.join(timeout=10)
        if service is not None:
            service.stop()
        if observer is not None:
            observer.close()
        broker.stop()


def service_facts(service: Service, poller: ServicePoller) -> dict[str, Any]:
    """What the service itself says at steady state: ingest status, the live view's counts, how
    long the live view took, whether the status needs a token, and warnings in its log."""
    facts: dict[str, Any] = {"poll_failures": poller.failures, "slowest_status_s": poller.slowest_s}
    status = service.status(timeout=30)
    if status:
        facts.update({k: status.get(k) for k in ("tracked_receivers", "ledger_backlog", "stale_messages",
                                                  "unobserved_outages", "mqtt_connections")})
        facts["counters"] = status.get("counters", {})
    code, body, took = _http_get(service.api_port, "/api/v1/live/receivers?state=online", service.token, 60)
    facts["live_status"] = code
    facts["live_s"] = took
    if body:
        facts["live_counts"] = {k: body.get(k) for k in ("online", "offline", "never_seen")}
    facts["memory_after_live"] = memory_kib(service.pid)
    facts["log_warnings"] = service.log_count("WARNING")
    facts["log_errors"] = service.log_count("ERROR")
    return facts


def _next_event(events: Any, deadline: float, processes: list[Any]) -> tuple[Any, ...]:
    while True:
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in processes if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"simulator process exited with {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError("simulator processes did not answer") from None
            continue
        if event[0] == "error":
            raise RuntimeError(event[1])
        return event


def _drain(events: Any, status: dict[int, dict[str, Any]], done: dict[int, dict[str, Any]], processes: list[Any]) -> None:
    for _ in range(10_000):
        try:
            event = events.get_nowait()
        except queue.Empty:
            return
        if event[0] == "error":
            raise RuntimeError(event[1])
        if event[0] == "sim-status":
            status[event[1]] = event[2]
        elif event[0] == "sim-done":
            done[event[1]] = event[2]


def progress_line(mode: str, elapsed: float, up: int, connected: int, status: dict[int, dict[str, Any]],
                  poller: ServicePoller | None, sampler: CpuSampler | None) -> str:
    text = (f"[{mode}] {elapsed:6.1f} s  up (simulators) {up:>6}  connected (broker) {connected:>6}  "
            f"CONNECTs {sum(s['connects'] for s in status.values()):>6}  "
            f"lag {max([0.0] + [s['lag_max'] for s in status.values()]):.2f} s")
    if poller is not None:
        latest = poller.latest()
        if latest:
            c = latest["counters"]
            text += (f"  service: accepted {c.get('accepted', 0)} transitions {c.get('transitions', 0)} "
                     f"ledger {c.get('ledger_written', 0)} backlog {latest['ledger_backlog']}")
    if sampler is not None:
        now = time.monotonic()
        cores = sampler.cores(now - PROGRESS_EVERY_S, now)
        if cores:
            text += "  cores " + " ".join(f"{k} {v:.2f}" for k, v in cores.items() if k != "machine")
    return text


# --- report ---------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.1f} s"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f} MiB"


def _per_rx(before: int, after: int, n: int) -> str:
    return f"**{(after - before) * 1024 / n / 1000:.1f} KB**" if n else "—"


def _cores(c: dict[str, float], service: bool) -> str:
    if not c:
        return "—"
    parts = [f"broker {c.get('broker', 0):.2f}"]
    if service:
        parts.append(f"service {c.get('service', 0):.2f}")
    parts += [f"simulators {c.get('simulators', 0):.2f}", f"other {c.get('other', 0):.2f}"]
    return " / ".join(parts) + f" (machine {c.get('machine', 0):.2f})"


def table(results: list[RunResult]) -> str:
    heads = [r.mode for r in results]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Any) -> None:
        rows.append((label, [cell(r) for r in results]))

    row("receivers connected (broker $SYS, at the end / lowest while steady)",
        lambda r: f"**{r.broker_connected:,}** / {r.broker_connected_min_steady:,} of {r.receivers:,}")
    row("up per the simulators' ground truth", lambda r: f"{r.sims_up:,}")
    row("seen online by the service (live API)",
        lambda r: f"{r.service.get('live_counts', {}).get('online', '—')}" if r.mode == SERVICE else "—")
    row("time to all connected: broker count / last receiver up",
        lambda r: f"**{_s(r.t_broker_all)}** / {_s(r.t_sims_all)}")
    row("per-receiver connect time p50 / p90 / p99 (incl. attach delay)",
        lambda r: " / ".join(_s(r.connect_percentiles.get(k)) for k in ("p50", "p90", "p99")))
    row("service: all births ingested / ledger written",
        lambda r: f"{_s(r.t_service_births)} / {_s(r.t_service_ledger)}" if r.mode == SERVICE else "—")
    row("CONNECTs sent (reconnects = CONNECTs − receivers) / refused",
        lambda r: f"{r.connects:,} ({r.connects - r.receivers:+,}) / {r.refused}")
    row("Mosquitto RSS before → after; per receiver",
        lambda r: f"{_mib(r.memory['broker_before']['rss'])} → {_mib(r.memory['broker_after']['rss'])}; "
        f"{_per_rx(r.memory['broker_before']['rss'], r.memory['broker_after']['rss'], r.broker_connected)}")
    row("service RSS before → after; per receiver",
        lambda r: (f"{_mib(r.memory['service_before']['rss'])} → {_mib(r.memory['service_after']['rss'])}; "
                   f"{_per_rx(r.memory['service_before']['rss'], r.memory['service_after']['rss'], r.broker_connected)}")
        if "service_after" in r.memory else "—")
    row("service USS (private pages) before → after; per receiver",
        lambda r: (f"{_mib(r.memory['service_before']['uss'])} → {_mib(r.memory['service_after']['uss'])}; "
                   f"{_per_rx(r.memory['service_before']['uss'], r.memory['service_after']['uss'], r.broker_connected)}"
                   f" (PSS {_mib(r.memory['service_before']['pss'])} → {_mib(r.memory['service_after']['pss'])})")
        if "service_after" in r.memory else "—")
    row("service peak RSS (VmHWM); RSS after one live-API read",
        lambda r: f"{_mib(r.memory['service_after']['hwm'])}; {_mib(r.service['memory_after_live']['rss'])}"
        if "service_after" in r.memory and "memory_after_live" in r.service else "—")
    row("simulators RSS, all processes: after imports → fleet built → steady; per receiver",
        lambda r: f"{_mib(r.sim_memory['base'])} → {_mib(r.sim_memory['built'])} → {_mib(r.sim_memory['after'])}; "
        f"{_per_rx(r.sim_memory['base'], r.sim_memory['after'], r.receivers)}")
    row("cores during the connect storm (power-on → all connected and in the ledger)",
        lambda r: f"{_cores(r.cpu_ramp, r.mode == SERVICE)} over {r.ramp_s:.1f} s")
    row("cores while steady", lambda r: f"{_cores(r.cpu_steady, r.mode == SERVICE)} over {r.steady_s:.0f} s")
    row("Mosquitto's own heap ($SYS heap/current) before → after; per receiver",
        lambda r: f"{_mib(r.memory['broker_heap']['before'])} → {_mib(r.memory['broker_heap']['after'])}; "
        f"{_per_rx(r.memory['broker_heap']['before'], r.memory['broker_heap']['after'], r.broker_connected)}"
        if "broker_heap" in r.memory else "—")
    row("broker: packets / PUBLISHes received per second while steady; publishes dropped in the run",
        lambda r: f"{r.broker_msgs_steady:,.0f} / {r.broker_publish_steady:,.0f}; {r.broker_dropped}")
    row("simulators' event-loop lag, worst: storm / steady",
        lambda r: f"{r.sim_lag_ramp:.2f} s / {r.sim_lag_steady:.2f} s")
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---|" * len(heads)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines)


def findings(results: list[RunResult], cfg: argparse.Namespace) -> list[str]:
    out: list[str] = []
    by_mode = {r.mode: r for r in results}
    s = by_mode.get(SERVICE)
    if s is not None and "service_after" in s.memory and s.broker_connected:
        per = (s.memory["service_after"]["rss"] - s.memory["service_before"]["rss"]) * 1.024 / s.broker_connected
        verdict = "meets" if per < cfg.goal_kb else "**misses**"
        out.append(f"- service memory per connected receiver: **{per:.1f} KB** (RSS) — {verdict} the goal of "
                   f"< {cfg.goal_kb:g} KB")
    for r in results:
        verdict = "all connected" if r.ok else f"**not all connected**: {r.note}"
        out.append(f"- {r.mode}: {verdict}; receivers' last errors: "
                   + (", ".join(f"{k} {v}" for k, v in r.sim_errors.items()) or "none")
                   + "; receivers' losses: " + (", ".join(f"{k} {v}" for k, v in r.sim_downs.items()
                                                           if k != "stopped") or "none")
                   + f"; broker: {r.broker_dropped} publishes dropped"
                   + (f" (log: 'Outgoing messages are being dropped' {r.broker_log.get('dropping', 0)}×)"
                      if r.broker_log.get("dropping") else "")
                   + (f", out of file descriptors (log: 'Unable to accept new connection, system socket count "
                      f"has been exceeded' {r.broker_log['fd_exhausted']:,}×)" if r.broker_log.get("fd_exhausted") else "")
                   + (f", {r.broker_log['tcpd_denied']:,} connections closed at once with 'Client connection from "
                      "127.0.0.1 denied access by tcpd' (Debian's build asks libwrap, which has to open "
                      "/etc/hosts.allow: at the open-file limit it cannot, and the connection is denied)"
                      if r.broker_log.get("tcpd_denied") else "")
                   + f", {r.broker_log.get('refused', 0)} refused logins, "
                   f"{r.broker_log.get('timeouts', 0)} keepalive timeouts")
    if s is not None and s.service:
        f = s.service
        c = f.get("counters", {})
        out.append(
            f"- service at the end: tracked {f.get('tracked_receivers')}, accepted {c.get('accepted')}, dropped "
            f"{c.get('dropped') or 'none'}, transitions {c.get('transitions')}, ledger written "
            f"{c.get('ledger_written')}, backlog {f.get('ledger_backlog')}, stale {f.get('stale_messages')}; "
            f"`/api/v1/ingest/status` without a token: HTTP {f.get('status_without_token')}; "
            f"`/api/v1/live/receivers?state=online` took {f.get('live_s', 0):.2f} s; slowest status poll "
            f"during the run {f.get('slowest_status_s', 0):.2f} s ({f.get('poll_failures')} unanswered); "
            f"log: {f.get('log_warnings')} warnings, {f.get('log_errors')} errors")
        if s.births_sent:
            # Per session a receiver publishes a birth, then one event; telemetry is counted.
            published = 2 * s.births_sent + s.telemetry_sent
            accepted = c.get("accepted") or 0
            out.append(f"- messages the receivers published ≈ {published:,} ({s.births_sent:,} births, as many "
                       f"events, {s.telemetry_sent:,} telemetry reports); the service accepted {accepted:,} "
                       f"(≈ {published - accepted:,} missing) and recorded {c.get('transitions'):,} transitions")
    r = by_mode.get(RAW)
    if r is not None and s is not None and r.t_broker_all and s.t_broker_all:
        out.append(f"- the service's effect on connecting: all connected after {s.t_broker_all:.1f} s with it, "
                   f"{r.t_broker_all:.1f} s without (attach delays alone spread power-on over {cfg.attach_delay:g} s)")
    return out


def source_state() -> str:
    """The commit the code under test is at, and whether the parts measured have local changes
    (read-only git commands; '?' outside a checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fleet_service", "simulators",
                                  "broker"], capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {head or '?'}" + (f" with local changes in {', '.join(files)}" if files else "")


def conditions(cfg: argparse.Namespace, info: dict[str, str], registry: Registry, hashing_s: float,
               results: list[RunResult]) -> str:
    first = results[0]
    return "\n".join([
        f"- machine: {info['nproc']} cores ({info['cpu']}), {info['memory']}; {info['python']}; "
        f"Mosquitto {info['mosquitto']}; {info['libraries']}; load average at start {info['load']}; "
        f"source: {info['source']}",
        f"- fleet: {cfg.receivers:,} receivers registered and provisioned through the registry service in "
        f"{registry.seconds:.0f} s (SQLite; {max(1, cfg.receivers // RECEIVERS_PER_STATION)} stations); "
        f"{cfg.simulators} simulator processes (`simulators.fleet.Fleet`), keepalive {cfg.keepalive} s, "
        f"telemetry every {cfg.telemetry_interval:g} s, attach delay uniform in 0–{cfg.attach_delay:g} s, backoff "
        "1–60 s full jitter, no faults; every receiver subscribes to its own state and cmd topics",
        f"- broker: a fresh private Mosquitto per run on 127.0.0.1, password_file ({cfg.receivers + 2:,} logins "
        f"hashed by `mosquitto_passwd -U` in {hashing_s:.1f} s) and acl_file (`pattern readwrite "
        f"loa/v1/rx/%u/#`, the service reads `loa/v1/rx/#`, an observer login reads `$SYS/#`), sys_interval "
        f"{SYS_INTERVAL_S} s, persistence off; tuning: "
        + (f"the production config's ({', '.join(f'`{t}`' for t in cfg.tuning)})" if cfg.tuning
           else "Mosquitto's defaults (max_queued_messages 1000, max_inflight_messages 20, ...)")
        + f"; open files: broker {first.broker_nofile}, simulators {first.sims_nofile}"
        + (" (the hard limit of this host, which cannot be raised here without CAP_SYS_RESOURCE: one broker "
           "process holds at most about that many connections)" if first.broker_nofile != str(NOFILE) else "")
        + f". Not the dynamic-security plugin: creating {cfg.receivers:,} logins through it "
        "takes tens of minutes on 2.0.11 (it rewrites its JSON file on every change)",
        f"- service: `loa serve` (LOA_BROKER=external, SQLite, LOA_TELEMETRY_INTERVAL_S="
        f"{cfg.telemetry_interval:g}) started before the receivers power on; its memory baseline is read "
        f"{SERVICE_SETTLE_S:g} s after it connected (registry of {cfg.receivers:,} loaded, ledger empty); "
        "'after' is read at the end of the steady window, before the live API is asked for the whole fleet",
        f"- steady window: {cfg.steady:g} s after all were connected (and, with the service, in the ledger); "
        "per receiver = (after − before) / receivers the broker counted; KB = 1000 bytes",
        "- raw = broker + simulators only; service = the same plus the service, each on a fresh broker, "
        "in that order; 'other' in the cores is the rest of the machine (other work on a shared host)",
    ])


def main(argv: list[str] | None = None) -> int:
    from bench.ingest_rate import machine, settle

    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=2000, help="receivers (default 2000; the goal is 10000)")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--keepalive", type=int, default=60, help="receivers' MQTT keepalive, s (default 60)")
    parser.add_argument("--telemetry-interval", type=float, default=60.0,
                        help="seconds between telemetry reports (default 60)")
    parser.add_argument("--attach-delay", type=float, default=5.0,
                        help="receivers power on together and connect after a modem attach delay uniform in "
                             "[0, this] s (default 5, the field value)")
    parser.add_argument("--steady", type=float, default=None,
                        help="seconds to stay connected before reading memory and CPU (default: telemetry "
                             "interval + 15)")
    parser.add_argument("--connect-timeout", type=float, default=600.0,
                        help="give up waiting for all to connect after this many seconds (default 600)")
    parser.add_argument("--modes", default=f"{RAW},{SERVICE}", help="runs, in order (default raw,service)")
    parser.add_argument("--broker-tuning", choices=("production", "default"), default="production",
                        help="production: the Tuning section of broker/mosquitto/mosquitto.conf (queue limits, "
                             "in-flight window, ...); default: Mosquitto's own defaults (default production)")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="before each run wait up to this many seconds for the machine to be idle (default 30)")
    parser.add_argument("--goal-kb", type=float, default=50.0, help="goal: service memory per receiver, KB")
    parser.add_argument("--dynsec-probe", type=int, default=0, metavar="LOGINS",
                        help="also time creating this many logins through Mosquitto's dynamic-security plugin "
                             "and extrapolate to --receivers (default: skip)")
    parser.add_argument("--append", metavar="MARKDOWN", help="append the results section to this file")
    parser.add_argument("--keep", metavar="DIR", help="keep the work directory (logs, registry) here")
    cfg = parser.parse_args(argv)
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    if cfg.receivers < 1 or not 1 <= cfg.simulators <= cfg.receivers or any(m not in (RAW, SERVICE) for m in modes):
        parser.error("need receivers ≥ 1, 1 ≤ simulators ≤ receivers, modes from raw,service")
    if cfg.steady is None:
        cfg.steady = cfg.telemetry_interval + 15.0
    cfg.tuning = production_tuning() if cfg.broker_tuning == "production" else []
    command = " ".join(["python -m bench.connections", *(sys.argv[1:] if argv is None else argv)])
    info = machine()
    info["source"] = source_state()
    print(f"# {command}\n", flush=True)
    raise_nofile()
    results: list[RunResult] = []
    probe: dict[str, Any] | None = None
    tmp = tempfile.mkdtemp(prefix="loa-bench-conn-", dir=cfg.keep)
    try:
        workdir = Path(tmp)
        registry = make_registry(workdir, cfg.receivers)
        print(f"registry: {cfg.receivers} receivers provisioned in {registry.seconds:.1f} s", flush=True)
        service_password = secrets.token_urlsafe(24)
        observer_password = secrets.token_urlsafe(24)
        passwd, acl, hashing = write_broker_files(workdir / "auth", registry.credentials, service_password,
                                                  observer_password)
        print(f"password file: {cfg.receivers + 2} logins hashed in {hashing:.1f} s", flush=True)
        cred_files = split_credentials(workdir, registry.credentials, cfg.simulators)
        if cfg.dynsec_probe:
            probe = dynsec_probe(workdir, cfg.dynsec_probe, cfg.receivers)
            print(f"dynamic security: {probe['logins']} logins in {probe['seconds']:.0f} s "
                  f"({probe['first_ms']:.1f} → {probe['last_ms']:.1f} ms per login); {cfg.receivers} "
                  f"projected {_duration(probe['projected_s'])}", flush=True)
        for mode in modes:
            busy = settle(cfg.settle)
            if busy >= QUIET_MACHINE_CORES:
                print(f"(machine still busy: {busy:.2f} cores in use before the {mode} run)", flush=True)
            results.append(run_mode(mode, cfg, workdir, registry, passwd, acl, service_password, observer_password,
                                    cred_files))
            print(f"[{mode}] done: {results[-1].broker_connected} connected", flush=True)
    finally:
        if cfg.keep:
            print(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    section = [
        f"## {date.today().isoformat()} — receivers connected at once (`bench/connections.py`)",
        "",
        f"Command: `{command}`",
        "",
        conditions(cfg, info, registry, hashing, results),
        "",
        *findings(results, cfg),
        *([f"- why a password file and not the dynamic-security plugin: {probe['logins']:,} receiver logins "
           f"created through it (production config, `MosquittoDynsec.add_receiver`) took {probe['seconds']:.0f} s, "
           f"{probe['first_ms']:.1f} ms per login at first and {probe['last_ms']:.1f} ms at the end (the plugin "
           f"rewrites its whole JSON file, {probe['file_mb']:.1f} MB by then, on every change; "
           f"+{probe['slope_us']:.0f} µs per login already present; Mosquitto's own CPU {probe['broker_cpu_s']:.0f} s "
           f"of the {probe['seconds']:.0f} s, time in which its single thread serves no client); "
           f"{probe['target']:,} logins: about "
           f"**{_duration(probe['projected_s'])}** by that trend"] if probe else []),
        "",
        table(results),
    ]
    snippet = "\n".join(section) + "\n"
    print("\n" + snippet)
    if cfg.append:
        with open(cfg.append, "a") as f:
            f.write("\n" + snippet)
        print(f"appended to {cfg.append}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
