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
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    NOFILE,
    RECEIVER_PREFIX,
    SYS_INTERVAL_S,
    Broker,
    BrokerAuth,
    CpuSampler,
    FleetParams,
    Registry,
    Service,
    ServicePoller,
    SimulatedFleet,
    SysObserver,
    add_fleet_options,
    add_run_options,
    command_line,
    cpu_seconds,
    http_get,
    machine,
    machine_line,
    make_registry,
    memory_kib,
    open_files_limit,
    percentile,
    production_tuning,
    raise_nofile,
    results_section,
    split_credentials,
    start_broker,
    start_service,
    wait_idle,
    write_broker_files,
)

# --- tuning ---------------------------------------------------------------------------------

# CPU and memory of every process are sampled this often.
SAMPLE_INTERVAL_S = 0.5
# Progress lines while the fleet connects.
PROGRESS_EVERY_S = 5.0
# Upper bounds on single waits: a process starting, a broker or service getting ready.
START_TIMEOUT_S = 180.0
# After the service connected to the broker, wait this long before reading its memory baseline.
SERVICE_SETTLE_S = 5.0

RAW, SERVICE = "raw", "service"


# --- why not the dynamic-security plugin ----------------------------------------------------

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
        broker_cpu = cpu_seconds(pid)
        last = time.monotonic()
        for i in range(logins):
            broker.accounts.add_receiver(f"{RECEIVER_PREFIX}-{i:05d}", secrets.token_urlsafe(20))
            if (i + 1) % block == 0 or i + 1 == logins:
                now = time.monotonic()
                size = (i % block) + 1
                blocks.append((i + 1 - size // 2, (now - last) / size))
                last = now
        file_bytes = broker.dynsec_file.stat().st_size
        broker_cpu = cpu_seconds(pid) - broker_cpu
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


# --- one run --------------------------------------------------------------------------------

def run_mode(mode: str, cfg: argparse.Namespace, workdir: Path, registry: Registry, auth: BrokerAuth,
             cred_files: list[str]) -> RunResult:
    n = cfg.receivers
    result = RunResult(mode, n)
    rundir = workdir / mode
    rundir.mkdir(parents=True, exist_ok=True)
    broker = start_broker(rundir / "broker", auth, cfg.tuning)
    result.broker_nofile = open_files_limit(broker.pid)
    observer: SysObserver | None = None
    service: Service | None = None
    poller: ServicePoller | None = None
    sampler: CpuSampler | None = None
    budget = cfg.connect_timeout + cfg.steady + 2 * START_TIMEOUT_S
    fleet = SimulatedFleet(FleetParams(broker.port, cred_files, cfg.keepalive, cfg.telemetry_interval,
                                       cfg.attach_delay, budget), cfg.simulators)
    memtrace = None
    try:
        observer = SysObserver(broker.port, auth.observer_password)
        if not observer.wait_for("clients/connected", 10):
            raise RuntimeError("no $SYS/broker/clients/connected from the broker")
        own_clients = 1
        if mode == SERVICE:
            if cfg.memtrace:
                from bench.memtrace import Memtrace

                memtrace = Memtrace(rundir / "memtrace", cfg.memtrace_frames)
            service = start_service(rundir, registry, broker.port, auth.service_password,
                                    telemetry_interval=cfg.telemetry_interval,
                                    env=memtrace.env if memtrace else None,
                                    python_module="bench.memtrace" if memtrace else None)
            own_clients += 1
            time.sleep(SERVICE_SETTLE_S)
            result.memory["service_before"] = memory_kib(service.pid)
            if memtrace is not None:
                result.service["memtrace_before"] = memtrace.take(service.pid, "before")
                result.memory["service_before"] = memory_kib(service.pid)
            code, _, _ = http_get(service.api_port, "/api/v1/ingest/status")
            result.service["status_without_token"] = code

        fleet.start()
        result.sims_nofile = min(r["nofile"] for r in fleet.ready.values())
        result.memory["broker_before"] = memory_kib(broker.pid)
        heap_before = observer.latest("heap/current")

        roles: dict[str, list[int]] = {"broker": [broker.pid], "simulators": fleet.pids}
        if service is not None:
            roles["service"] = [service.pid]
        sampler = CpuSampler(roles, interval_s=SAMPLE_INTERVAL_S, deadline_s=budget + 60)
        sampler.start()
        if service is not None:
            poller = ServicePoller(service, budget + 60)
            poller.start()
        time.sleep(2 * SAMPLE_INTERVAL_S)

        print(f"[{mode}] {n} receivers in {cfg.simulators} simulator processes power on "
              f"(attach delay 0–{cfg.attach_delay:g} s)", flush=True)
        fleet.go()
        go_mono = fleet.go_mono
        lag_ramp = 0.0
        next_progress = go_mono + PROGRESS_EVERY_S
        ready_at: float | None = None
        connect_deadline = go_mono + cfg.connect_timeout

        # The connect storm: until the simulators, the broker and the service all have all N.
        while time.monotonic() < connect_deadline:
            fleet.poll()
            lag_ramp = max(lag_ramp, fleet.lag())
            up = fleet.total("up")
            connected = int((observer.latest("clients/connected") or 0) - own_clients)
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                print(progress_line(mode, now - go_mono, up, connected, fleet, poller, sampler), flush=True)
            if up >= n and connected >= n and (poller is None or poller.caught_up(n)):
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
            fleet.poll()
            lag_steady = max(lag_steady, fleet.lag())
            connected = observer.latest("clients/connected")
            if connected is not None and time.monotonic() > steady_start + 2 * SYS_INTERVAL_S:
                c = int(connected - own_clients)
                min_connected = c if min_connected is None else min(min_connected, c)
            now = time.monotonic()
            if now >= next_progress:
                next_progress = now + PROGRESS_EVERY_S
                print(progress_line(mode, now - go_mono, fleet.total("up"), int((connected or 0) - own_clients),
                                    fleet, poller, sampler), flush=True)
            time.sleep(0.25)
        steady_stop = time.monotonic()
        fleet.poll()
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
        sim_after = [memory_kib(pid) for pid in fleet.pids]
        result.sim_memory = {
            "base": sum(r["base"]["rss"] for r in fleet.ready.values()),
            "built": sum(r["built"]["rss"] for r in fleet.ready.values()),
            "after": sum(m["rss"] for m in sim_after),
            "after_pss": sum(m["pss"] for m in sim_after),
        }
        connected_now = observer.latest("clients/connected")
        result.broker_connected = int((connected_now or 0) - own_clients)
        result.broker_connected_min_steady = min_connected if min_connected is not None else result.broker_connected
        result.sims_up = fleet.total("up")
        result.connects = fleet.total("connects")
        result.refused = fleet.total("refused")
        result.telemetry_sent = fleet.total("telemetry")
        result.births_sent = fleet.total("births")
        t_broker = observer.first_reaching("clients/connected", n + own_clients)
        result.t_broker_all = t_broker - go_mono if t_broker is not None else None
        if service is not None and poller is not None:
            result.memory["service_after"] = memory_kib(service.pid)
            if memtrace is not None:
                result.service["memtrace_after"] = memtrace.take(service.pid, "after")
                result.service["memtrace_report"] = memtrace.report(
                    result.service["memtrace_before"], result.service["memtrace_after"], result.broker_connected,
                    (result.memory["service_before"]["rss"], result.memory["service_after"]["rss"]))
            t_births = poller.first(lambda b: b["counters"].get("transitions", 0) >= n)
            t_ledger = poller.first(lambda b: b["counters"].get("ledger_written", 0) >= n and b["ledger_backlog"] == 0)
            result.t_service_births = t_births - go_mono if t_births is not None else None
            result.t_service_ledger = t_ledger - go_mono if t_ledger is not None else None
            poller.stop()
            result.service.update(service_facts(service, poller))

        # Stop the receivers and collect their connect times.
        fleet.finish()
        first_up = [t - fleet.go_wall for t in fleet.first_up().values()]
        last_up = [s["all_up_at"] for s in fleet.status.values()]
        result.t_sims_all = (max(last_up) - fleet.go_wall) if last_up and None not in last_up else None
        result.connect_percentiles = {"p50": percentile(first_up, 0.5), "p90": percentile(first_up, 0.9),
                                      "p99": percentile(first_up, 0.99), "max": max(first_up, default=float("nan"))}
        for d in fleet.done.values():
            for k, v in d["errors"].items():
                result.sim_errors[k] = result.sim_errors.get(k, 0) + v
            for k, v in d["downs"].items():
                result.sim_downs[k] = result.sim_downs.get(k, 0) + v
        result.broker_log = broker_log(broker)
        result.ok = ready_at is not None and result.broker_connected_min_steady >= n
        if not result.ok and not result.note:
            result.note = f"the broker counted {result.broker_connected_min_steady} connected at worst while steady"
        return result
    finally:
        if poller is not None:
            poller.stop()
        if sampler is not None:
            sampler.stop()
        fleet.close()
        if service is not None:
            service.stop()
        if observer is not None:
            observer.close()
        broker.stop()


def broker_log(broker: Broker) -> dict[str, int]:
    """Counts of the broker's log lines that say something went wrong."""
    return {"refused": broker.log_lines("not authorised"),
            "dropping": broker.log_lines("are being dropped"),
            "fd_exhausted": broker.log_lines("socket count has been exceeded"),
            # Debian's Mosquitto checks each connection with libwrap, which must open
            # /etc/hosts.allow: with no descriptor left it denies.
            "tcpd_denied": broker.log_lines("denied access by tcpd"),
            "timeouts": broker.log_lines("exceeded timeout"),
            "errors": broker.log_lines("Error")}


def service_facts(service: Service, poller: ServicePoller) -> dict[str, Any]:
    """What the service itself says at steady state: ingest status, the live view's counts, how
    long the live view took, whether the status needs a token, and warnings in its log."""
    facts: dict[str, Any] = {"poll_failures": poller.failures, "slowest_status_s": poller.slowest_s}
    status = service.status(timeout=30)
    if status:
        facts.update({k: status.get(k) for k in ("tracked_receivers", "ledger_backlog", "stale_messages",
                                                  "unobserved_outages", "mqtt_connections")})
        facts["counters"] = status.get("counters", {})
    code, body, took = service.get("/api/v1/live/receivers?state=online", 60)
    facts["live_status"] = code
    facts["live_s"] = took
    if body:
        facts["live_counts"] = {k: body.get(k) for k in ("online", "offline", "never_seen")}
    facts["memory_after_live"] = memory_kib(service.pid)
    facts["log_warnings"] = service.log_count("WARNING")
    facts["log_errors"] = service.log_count("ERROR")
    return facts


def progress_line(mode: str, elapsed: float, up: int, connected: int, fleet: SimulatedFleet,
                  poller: ServicePoller | None, sampler: CpuSampler | None) -> str:
    text = (f"[{mode}] {elapsed:6.1f} s  up (simulators) {up:>6}  connected (broker) {connected:>6}  "
            f"CONNECTs {fleet.total('connects'):>6}  lag {fleet.lag():.2f} s")
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
            # Per session a receiver publishes a birth, then one event and its retained play status
            # (simulators/receiver.py); telemetry is counted.
            published = 3 * s.births_sent + s.telemetry_sent
            accepted = c.get("accepted") or 0
            out.append(f"- messages the receivers published ≈ {published:,} ({s.births_sent:,} births, as many "
                       f"events and as many play statuses, {s.telemetry_sent:,} telemetry reports); the service "
                       f"accepted {accepted:,} "
                       f"(≈ {published - accepted:,} missing) and recorded {c.get('transitions'):,} transitions")
    r = by_mode.get(RAW)
    if r is not None and s is not None and r.t_broker_all and s.t_broker_all:
        out.append(f"- the service's effect on connecting: all connected after {s.t_broker_all:.1f} s with it, "
                   f"{r.t_broker_all:.1f} s without (attach delays alone spread power-on over {cfg.attach_delay:g} s)")
    return out



def conditions(cfg: argparse.Namespace, info: dict[str, str], registry: Registry, hashing_s: float,
               results: list[RunResult]) -> str:
    first = results[0]
    return "\n".join([
        machine_line(info, source=True),
        f"- fleet: {cfg.receivers:,} receivers registered and provisioned through the registry service in "
        f"{registry.seconds:.0f} s (SQLite; {registry.stations} stations); "
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
    parser = argparse.ArgumentParser(prog="python -m bench.connections", description=__doc__.split("\n\n")[0])
    add_fleet_options(parser, receivers=2000)
    parser.add_argument("--steady", type=float, default=None,
                        help="seconds to stay connected before reading memory and CPU (default: telemetry "
                             "interval + 15)")
    parser.add_argument("--connect-timeout", type=float, default=600.0,
                        help="give up waiting for all to connect after this many seconds (default 600)")
    parser.add_argument("--modes", default=f"{RAW},{SERVICE}", help="runs, in order (default raw,service)")
    parser.add_argument("--broker-tuning", choices=("production", "default"), default="production",
                        help="production: the Tuning section of broker/mosquitto/mosquitto.conf (queue limits, "
                             "in-flight window, ...); default: Mosquitto's own defaults (default production)")
    add_run_options(parser, settle=30.0)
    parser.add_argument("--goal-kb", type=float, default=5.0,
                        help="goal: service memory per receiver, KB (default 5)")
    parser.add_argument("--dynsec-probe", type=int, default=0, metavar="LOGINS",
                        help="also time creating this many logins through Mosquitto's dynamic-security plugin "
                             "and extrapolate to --receivers (default: skip)")
    parser.add_argument("--memtrace", action="store_true",
                        help="run the service under tracemalloc (bench.memtrace) and report what grew per "
                             "receiver: structures and allocation sites (slower; its RSS is not comparable)")
    parser.add_argument("--memtrace-frames", type=int, default=25,
                        help="tracemalloc frames (default 25; 0: no tracemalloc, the structures only, and the "
                             "service's RSS as without --memtrace)")
    cfg = parser.parse_args(argv)
    modes = [m.strip() for m in cfg.modes.split(",") if m.strip()]
    if cfg.receivers < 1 or not 1 <= cfg.simulators <= cfg.receivers or any(m not in (RAW, SERVICE) for m in modes):
        parser.error("need receivers ≥ 1, 1 ≤ simulators ≤ receivers, modes from raw,service")
    if cfg.steady is None:
        cfg.steady = cfg.telemetry_interval + 15.0
    cfg.tuning = production_tuning() if cfg.broker_tuning == "production" else []
    command = command_line("bench.connections", argv)
    info = machine()
    print(f"# {command}\n", flush=True)
    raise_nofile()
    results: list[RunResult] = []
    probe: dict[str, Any] | None = None
    tmp = tempfile.mkdtemp(prefix="loa-bench-conn-", dir=cfg.keep)
    try:
        workdir = Path(tmp)
        registry = make_registry(workdir, cfg.receivers)
        print(f"registry: {cfg.receivers} receivers provisioned in {registry.seconds:.1f} s", flush=True)
        auth = write_broker_files(workdir / "auth", registry.credentials)
        print(f"password file: {cfg.receivers + 2} logins hashed in {auth.hashing_s:.1f} s", flush=True)
        cred_files = split_credentials(workdir, registry.credentials, cfg.simulators)
        if cfg.dynsec_probe:
            probe = dynsec_probe(workdir, cfg.dynsec_probe, cfg.receivers)
            print(f"dynamic security: {probe['logins']} logins in {probe['seconds']:.0f} s "
                  f"({probe['first_ms']:.1f} → {probe['last_ms']:.1f} ms per login); {cfg.receivers} "
                  f"projected {_duration(probe['projected_s'])}", flush=True)
        for mode in modes:
            wait_idle(cfg.settle, f"the {mode} run")
            results.append(run_mode(mode, cfg, workdir, registry, auth, cred_files))
            print(f"[{mode}] done: {results[-1].broker_connected} connected", flush=True)
    finally:
        if cfg.keep:
            print(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    memtrace = next((r.service["memtrace_report"] for r in results if "memtrace_report" in r.service), [])
    results_section(
        "receivers connected at once", "connections.py", command,
        conditions(cfg, info, registry, auth.hashing_s, results),
        [*findings(results, cfg),
         *([f"- why a password file and not the dynamic-security plugin: {probe['logins']:,} receiver logins "
            f"created through it (production config, `MosquittoDynsec.add_receiver`) took {probe['seconds']:.0f} s, "
            f"{probe['first_ms']:.1f} ms per login at first and {probe['last_ms']:.1f} ms at the end (the plugin "
            f"rewrites its whole JSON file, {probe['file_mb']:.1f} MB by then, on every change; "
            f"+{probe['slope_us']:.0f} µs per login already present; Mosquitto's own CPU {probe['broker_cpu_s']:.0f} s "
            f"of the {probe['seconds']:.0f} s, time in which its single thread serves no client); "
            f"{probe['target']:,} logins: about "
            f"**{_duration(probe['projected_s'])}** by that trend"] if probe else [])],
        table(results), memtrace, append=cfg.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
