"""Live-state lag: how long after a receiver's birth the service shows it online, against how
long the birth takes to reach a plain MQTT subscriber, under a connect storm.

One invocation registers and provisions ``--receivers`` receivers, starts a private Mosquitto
(password file, per-receiver ACL, the production tuning) and ``loa serve`` against it
(``LOA_BROKER=external``, SQLite), then powers the whole virtual fleet on at once
(``simulators.fleet.Fleet`` in ``--simulators`` processes, attach delay uniform in
``[0, --attach-delay]``). For every receiver it records, on this machine's wall clock:

- **birth**: when the receiver handed its birth (``state online``, retained, QoS 1) to its
  connection (the simulator's ground truth);
- **raw**: when that birth reached a plain paho subscriber on ``loa/v1/rx/+/state`` in its own
  process: the broker's and the machine's share of the lag, the baseline;
- **table**: when the receiver first showed ``online`` in ``receiver_live_state`` (the table the
  live API reads), polled every ``--poll`` seconds through a read-only SQLite connection;
- **API** (with ``--api-poll S``): when ``GET /api/v1/live/receivers?state=online`` first listed
  it (polled one request after the other, at most every S seconds; each answer dated when it
  arrived).

Reported: the lag from birth to each, p50 / p90 / p99 / max over the receivers, and the service's
against raw.

    python -m bench.live_lag                                  # 1,000 receivers, ~1 min
    python -m bench.live_lag --receivers 10000 --api-poll 1 --append bench/RESULTS.md

See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    OBSERVER_USER,
    CpuSampler,
    FleetParams,
    Service,
    SimulatedFleet,
    SysObserver,
    add_fleet_options,
    add_run_options,
    attach_py_spy,
    command_line,
    expect,
    join_all,
    machine,
    machine_line,
    make_registry,
    percentile,
    production_tuning,
    raise_nofile,
    report_failure,
    results_section,
    split_credentials,
    start_broker,
    start_service,
    wait_idle,
    wait_py_spy,
    write_broker_files,
)

STATE_TOPICS = "loa/v1/rx/+/state"
SAMPLE_INTERVAL_S = 0.25
PROGRESS_EVERY_S = 5.0
# After the service connected, before the receivers power on.
SERVICE_SETTLE_S = 3.0
QUANTILES = (0.5, 0.9, 0.99, 1.0)


# --- the raw subscriber (its own process) ---------------------------------------------------

def _raw_main(port: int, password: str, events: Any, stop: Any) -> None:
    try:
        events.put(("raw-done", _raw(port, password, events, stop)))
    except BaseException as exc:
        report_failure(events, "raw subscriber", exc)


def _raw(port: int, password: str, events: Any, stop: Any) -> dict[str, float]:
    """Each receiver's first online birth as a paho subscriber sees it (wall clock)."""
    import paho.mqtt.client as mqtt

    first: dict[str, float] = {}
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        now = time.time()
        rid = message.topic.split("/")[3]
        if rid not in first and not message.retain:
            try:
                online = json.loads(message.payload).get("state") == "online"
            except ValueError:
                return
            if online:
                first[rid] = now
                if len(first) % 100 == 0:
                    events.put(("raw-count", len(first)))

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw-births", clean_session=True,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(OBSERVER_USER, password)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(STATE_TOPICS, qos=1)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("not subscribed")
        events.put(("raw-ready",))
        stop.wait()
    finally:
        client.disconnect()
        client.loop_stop()
    return first


# --- the service's side ---------------------------------------------------------------------

class FirstSeen(threading.Thread):
    """Polls a source of the receivers online now, keeping when each was first listed."""

    def __init__(self, list_online: Any, every_s: float) -> None:
        super().__init__(daemon=True)
        self.list_online = list_online
        self.every_s = every_s
        self.first: dict[str, float] = {}
        self.polls = 0
        self.failures = 0
        self.slowest_s = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                online = self.list_online()
            except Exception:  # the table is not there yet, the API answered with an error ...
                online = None
            now = time.time()
            took = time.monotonic() - started
            self.slowest_s = max(self.slowest_s, took)
            if online is None:
                self.failures += 1
            else:
                self.polls += 1
                for rid in online:
                    self.first.setdefault(rid, now)
            self._stop_event.wait(max(0.0, self.every_s - took))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=120)


def table_source(database: Path) -> Any:
    """The receivers ``online`` in receiver_live_state, through a read-only connection."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5, check_same_thread=False)

    def online() -> list[str]:
        return [row[0] for row in connection.execute("SELECT receiver_id FROM receiver_live_state WHERE online")]

    return online


def api_source(service: Service) -> Any:
    def online() -> list[str] | None:
        code, body, _ = service.get("/api/v1/live/receivers?state=online", timeout=60)
        return [r["receiver_id"] for r in body["receivers"]] if code == 200 and body else None

    return online


# --- one run --------------------------------------------------------------------------------

def lags(births: dict[str, float], seen: dict[str, float]) -> list[float]:
    return [seen[rid] - t for rid, t in births.items() if rid in seen]


def run(cfg: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n = cfg.receivers
    registry = make_registry(workdir, n)
    print(f"registry: {n} receivers provisioned in {registry.seconds:.1f} s", flush=True)
    auth = write_broker_files(workdir / "auth", registry.credentials, observer_reads=[STATE_TOPICS])
    cred_files = split_credentials(workdir, registry.credentials, cfg.simulators)
    ctx = mp.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    facts: dict[str, Any] = {"registry_s": registry.seconds, "hashing_s": auth.hashing_s}
    with start_broker(workdir / "broker", auth, production_tuning()) as broker:
        observer = SysObserver(broker.port, auth.observer_password)
        raw = ctx.Process(target=_raw_main, args=(broker.port, auth.observer_password, events, stop), daemon=True,
                          name="raw-subscriber")
        service: Service | None = None
        fleet = SimulatedFleet(FleetParams(broker.port, cred_files, cfg.keepalive, cfg.telemetry_interval,
                                           cfg.attach_delay, cfg.timeout + 300), cfg.simulators)
        pollers: dict[str, FirstSeen] = {}
        spy: subprocess.Popen[bytes] | None = None
        sampler: CpuSampler | None = None
        try:
            service = start_service(workdir, registry, broker.port, auth.service_password,
                                    telemetry_interval=cfg.telemetry_interval)
            time.sleep(SERVICE_SETTLE_S)
            raw.start()
            expect(events, "raw-ready", watch=[raw])
            fleet.start()
            pollers["table"] = FirstSeen(table_source(service.database), cfg.poll)
            if cfg.api_poll:
                pollers["API"] = FirstSeen(api_source(service), cfg.api_poll)
            sampler = CpuSampler({"broker": [broker.pid], "service": [service.pid], "simulators": fleet.pids,
                                  "raw subscriber": [raw.pid]}, interval_s=SAMPLE_INTERVAL_S,
                                 deadline_s=cfg.timeout + 120)
            sampler.start()
            for poller in pollers.values():
                poller.start()
            wait_idle(cfg.settle, "the receivers power on")
            if cfg.py_spy:
                spy = attach_py_spy(service.pid, str(Path(cfg.py_spy).resolve()), rate=100,
                                    duration_s=cfg.timeout, idle=True)
            print(f"{n} receivers in {cfg.simulators} simulator processes power on (attach delay "
                  f"0–{cfg.attach_delay:g} s)", flush=True)
            fleet.go()
            raw_count = 0
            deadline = fleet.go_mono + cfg.timeout
            next_progress = fleet.go_mono + PROGRESS_EVERY_S
            all_at: float | None = None
            while time.monotonic() < deadline:
                fleet.poll()
                while not events.empty():
                    event = events.get_nowait()
                    if event[0] == "raw-count":
                        raw_count = event[1]
                    elif event[0] == "error":
                        raise RuntimeError(event[1])
                now = time.monotonic()
                if now >= next_progress:
                    next_progress = now + PROGRESS_EVERY_S
                    print(f"{now - fleet.go_mono:6.1f} s  up {fleet.total('up'):>6}  raw ≥{raw_count:>6}  "
                          + "  ".join(f"{k} {len(p.first):>6}" for k, p in pollers.items()), flush=True)
                if fleet.total("up") >= n and all(len(p.first) >= n for p in pollers.values()):
                    all_at = now
                    break
                time.sleep(0.2)
            facts["all_s"] = (all_at or time.monotonic()) - fleet.go_mono
            facts["cpu"] = sampler.cores(fleet.go_mono, all_at or time.monotonic())
            for poller in pollers.values():
                poller.stop()
            stop.set()
            raw_first = expect(events, "raw-done", timeout=60, watch=[raw])[1]
            fleet.finish()
            facts["connected"] = int((observer.latest("clients/connected") or 0) - 3)  # less observer, raw, service
            facts["dropped"] = int(observer.latest("publish/messages/dropped") or 0)
            facts["reconnects"] = fleet.total("connects") - n
        finally:
            stop.set()
            for poller in pollers.values():
                poller.stop()
            if sampler is not None:
                sampler.stop()
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled on SIGINT
                wait_py_spy(spy)
            fleet.close()
            join_all([raw])
            if service is not None:
                service.stop()
            observer.close()
    births = fleet.first_up()
    facts["births"] = len(births)
    facts["series"] = {"raw subscriber": lags(births, raw_first),
                       **{f"service: {k}": lags(births, p.first) for k, p in pollers.items()}}
    facts["pollers"] = {k: {"polls": p.polls, "failures": p.failures, "slowest_s": p.slowest_s, "every_s": p.every_s}
                        for k, p in pollers.items()}
    facts["service_log"] = {"warnings": service.log_count("WARNING"), "errors": service.log_count("ERROR")} \
        if service is not None else {}
    return facts


# --- report ---------------------------------------------------------------------------------

def _s(value: float) -> str:
    return "—" if value != value else f"{value:.2f} s"


def table(facts: dict[str, Any], n: int) -> str:
    raw = facts["series"]["raw subscriber"]
    lines = ["| birth → | seen | p50 | p90 | p99 | max | p50 / p99 vs raw |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, values in facts["series"].items():
        q = [percentile(values, x) for x in QUANTILES]
        vs = "—"
        if name != "raw subscriber" and values and raw:
            r50, r99 = percentile(raw, 0.5), percentile(raw, 0.99)
            vs = f"+{q[0] - r50:.2f} s / +{q[2] - r99:.2f} s"
        lines.append(f"| {name} | {len(values):,} of {n:,} | " + " | ".join(_s(x) for x in q) + f" | {vs} |")
    return "\n".join(lines)


def conditions(cfg: argparse.Namespace, info: dict[str, str], facts: dict[str, Any]) -> list[str]:
    polls = facts["pollers"]
    cpu = facts.get("cpu", {})
    return [
        machine_line(info, source=True),
        f"- fleet: {cfg.receivers:,} receivers registered and provisioned ({facts['registry_s']:.0f} s, SQLite); "
        f"{cfg.simulators} simulator processes (`simulators.fleet.Fleet`), all powered on at once, attach delay "
        f"uniform in 0–{cfg.attach_delay:g} s, keepalive {cfg.keepalive} s, telemetry every "
        f"{cfg.telemetry_interval:g} s; birth = when a receiver handed its birth to its connection (ground truth)",
        f"- broker: a private Mosquitto on 127.0.0.1, password file ({cfg.receivers + 2:,} logins) and `%u` ACL, the "
        "Tuning section of broker/mosquitto/mosquitto.conf; the raw subscriber (paho, own process, network thread) "
        f"takes `{STATE_TOPICS}` at QoS 1",
        f"- service: `loa serve` (LOA_BROKER=external, SQLite, a copy of the registry), started before the receivers; "
        f"`receiver_live_state` polled every {cfg.poll:g} s (read-only SQLite, slowest poll "
        f"{polls['table']['slowest_s']:.3f} s)"
        + (f"; the live API polled one request after the other, at most every {cfg.api_poll:g} s "
           f"({polls['API']['polls']} answers, slowest {polls['API']['slowest_s']:.2f} s, {polls['API']['failures']} "
           "failed): its figures include up to one request's time" if "API" in polls else ""),
        f"- storm: all {'shown online' if facts.get('all_s') else 'seen'} after {facts.get('all_s', 0):.1f} s; "
        f"CONNECTs beyond one per receiver {facts.get('reconnects', 0)}; broker drops {facts.get('dropped', 0)}; "
        "cores from power-on to the last: " + " / ".join(f"{k} {v:.2f}" for k, v in cpu.items() if k != "machine")
        + f"; service log: {facts['service_log'].get('warnings', 0)} warnings, "
        f"{facts['service_log'].get('errors', 0)} errors",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_lag", description=__doc__.split("\n\n")[0])
    add_fleet_options(parser, receivers=1000)
    parser.add_argument("--poll", type=float, default=0.1, help="receiver_live_state polled every this many s")
    parser.add_argument("--api-poll", type=float, default=0.0,
                        help="also poll GET /api/v1/live/receivers?state=online, at most every this many s "
                             "(default 0: not; at 10,000 one answer takes about a second and loads the service)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many s (default 300)")
    parser.add_argument("--py-spy", metavar="FILE", dest="py_spy",
                        help="sample the service with py-spy (on PATH or $PY_SPY) through the storm, waiting threads "
                             "included, collapsed stacks to FILE")
    add_run_options(parser, settle=30.0)
    cfg = parser.parse_args(argv)
    if cfg.receivers < 1 or not 1 <= cfg.simulators <= cfg.receivers or cfg.poll <= 0:
        parser.error("need receivers ≥ 1, 1 ≤ simulators ≤ receivers, poll > 0")
    command = command_line("bench.live_lag", argv)
    info = machine()
    print(f"# {command}\n", flush=True)
    raise_nofile()
    tmp = tempfile.mkdtemp(prefix="loa-bench-lag-", dir=cfg.keep)
    try:
        facts = run(cfg, Path(tmp))
    finally:
        if cfg.keep:
            print(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results_section(f"live-state lag under a connect storm of {cfg.receivers:,} receivers", "live_lag.py", command,
                    conditions(cfg, info, facts), table(facts, cfg.receivers), append=cfg.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
