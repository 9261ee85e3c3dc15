"""Alerts when power goes out: a commune, then a whole district, among N receivers; what the
crews are sent and how soon, and what evaluating the rules costs beside ingest.

One invocation registers and provisions ``--receivers`` receivers in one province and one
district of communes (``--stations-per-commune`` stations of ``--per-station`` receivers each:
10,000 = 100 communes × 5 stations × 20 receivers), starts a private Mosquitto (password file,
per-receiver ACL, the production tuning), a webhook receiver on loopback (the way a Zalo or SMS
gateway is reached: every POST kept with its arrival time), and runs ``loa serve``
(``LOA_BROKER=external``, SQLite) twice, each time with the whole virtual fleet powered on
(``simulators.fleet.Fleet`` in ``--simulators`` processes that take power commands):

1. **alerts off**: ``python -m bench.alerts serve``, which is ``loa serve`` with the alert
   evaluator's and the notifier's loops not started (nothing else changed). ``--idle`` seconds
   with no receiver connected give the service's fixed costs; once every receiver is online and
   ``--warmup`` seconds have passed, ``--steady`` seconds of CPU (/proc) and of telemetry
   messages accepted (the service's ingest counters): ingest's own cost per message is that
   CPU less the fixed costs, per message.
2. **alerts on**: ``loa serve`` as it is. Through its API: a service-wide override of the
   ``offline`` rule (pending ``--pending`` s, hold-down ``--hold`` s, instead of 5 and 3 minutes,
   so that a run takes minutes) and a crew for the district, whose members are each told on one
   ``json://`` channel of the webhook receiver (default escalation: the one on call at once, the
   next after 15 minutes, the engineer after 30; a phase is over well before 15 minutes). Then
   the same steady window: the difference is what alerts add, per message.
   - **phase 1**: every receiver of the first commune loses power at once (``Fleet.power_loss``:
     no goodbye, no FIN; the broker notices at the keepalive timeout and sends the Will). Measured
     from the moment the power went: when the service's live state showed the first and the last
     of them offline, when the first incident was opened, and the messages the webhook received
     (how many, when the first and the last came, which incidents they were about). The commune
     is then powered on again and its incidents left to resolve (their resolution messages are
     counted too).
   - **phase 2**: every receiver of the district loses power at once. The same measures.

    python -m bench.alerts --receivers 1000 --steady 120      # quick: 10 communes, ~12 min
    python -m bench.alerts --py-spy /tmp/alerts.spy --append bench/RESULTS.md   # 10,000, ~35 min

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import (
    SEED,
    START_TIMEOUT_S,
    CpuSampler,
    FleetParams,
    Registry,
    Service,
    add_fleet_options,
    add_run_options,
    attach_py_spy,
    cpu_seconds,
    command_line,
    join_all,
    machine,
    machine_line,
    production_tuning,
    raise_nofile,
    receiver_ids,
    report_failure,
    results_section,
    split_credentials,
    start_broker,
    start_service,
    wait_idle,
    wait_py_spy,
    write_broker_files,
)

ENV_SWITCH = "LOA_BENCH_ALERTS"   # "off": the wrapper does not start the evaluator and the notifier
POLL_S = 0.5
PROGRESS_EVERY_S = 10.0
# A phase is over once nothing has come to the webhook for this long, after every receiver cut
# was seen offline and the pending time has passed.
QUIET_S = 20.0
SIMULATOR_STATUS_S = 1.0
CREW = [("An", False), ("Bình", False), ("Chi", True)]   # (name, engineer): An is on call first


# --- the service without alerts (in the service's process) -----------------------------------

def serve() -> None:
    """``loa serve`` (the arguments after ``serve``); with LOA_BENCH_ALERTS=off the alert
    evaluator and the notifier are built but their loops never start, and the event counter
    counts nothing, so that the same service can be measured without them."""
    if os.environ.get(ENV_SWITCH) == "off":
        from fleet_service.alerts.counts import EventCounter
        from fleet_service.alerts.evaluator import AlertEvaluator
        from fleet_service.alerts.notify import Notifier

        async def not_started(self: Any) -> None:
            return None

        def not_counted(self: Any, _event: Any) -> None:
            return None

        AlertEvaluator.start = not_started  # type: ignore[method-assign]
        Notifier.start = not_started  # type: ignore[method-assign]
        EventCounter.start = not_started  # type: ignore[method-assign]
        EventCounter.on_telemetry = not_counted  # type: ignore[method-assign]
        EventCounter.on_event = not_counted  # type: ignore[method-assign]
    from fleet_service.cli import app

    app()


# --- the registry: a district of communes ----------------------------------------------------

@dataclass
class Layout:
    district_id: int
    communes: list[tuple[int, str, list[str]]]   # (region id, name, receiver ids)

    def commune_of(self) -> dict[str, str]:
        return {rid: name for _, name, rids in self.communes for rid in rids}


def make_district(workdir: Path, receivers: int, per_station: int, per_commune: int) -> tuple[Registry, Layout]:
    """A migrated SQLite registry: one province, one district, communes of ``per_commune``
    stations of ``per_station`` receivers each (registered and provisioned through the registry
    service), an admin with an API token; the outbox marked applied, as bench.harness does."""
    from sqlalchemy import update

    from fleet_service.auth import service as auth
    from fleet_service.auth.models import Role
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
    communes: list[tuple[int, str, list[str]]] = []
    ids = receiver_ids(receivers)
    per_commune_rx = per_station * per_commune
    try:
        sessions = make_sessionmaker(engine)
        with session_scope(sessions) as session:
            province = registry.create_region(session, RegionCreate(name="Thái Nguyên", level="tỉnh", code="bench-p"))
            district = registry.create_region(
                session, RegionCreate(name="Đại Từ", level="huyện", code="bench-d", parent_id=province.id))
            district_id = district.id
            for c in range(0, receivers, per_commune_rx):
                number = c // per_commune_rx + 1
                name = f"Xã {number:03d}"
                commune = registry.create_region(session, RegionCreate(name=name, level="xã", code=f"bench-x{number}",
                                                                       parent_id=district_id))
                members = ids[c:c + per_commune_rx]
                for s in range(0, len(members), per_station):
                    station = registry.create_station(session, StationCreate(
                        region_id=commune.id, name=f"Đài {number}-{s // per_station + 1}",
                        latitude=21.5 + number * 0.001, longitude=105.6 + s * 0.0001))
                    for rid in members[s:s + per_station]:
                        registry.register_receiver(session, ReceiverCreate(
                            id=rid, hardware_id=f"bench-hw-{rid}", station_id=station.id))
                        credentials[rid] = registry.provision(session, rid).mqtt_password
                communes.append((commune.id, name, list(members)))
            user = auth.create_user(session, "bench-admin", role=Role.ADMIN, password=None)
            _, token = auth.issue_token(session, user.id, "bench")
            session.execute(update(OutboxEntry).where(OutboxEntry.done_at.is_(None))
                            .values(done_at=utcnow(), payload="{}"))
    finally:
        engine.dispose()
    return Registry(path, credentials, token, time.monotonic() - started), Layout(district_id, communes)


# --- the webhook receiver ---------------------------------------------------------------------

@dataclass
class Post:
    at: float          # wall clock on arrival
    path: str
    title: str


@dataclass
class Webhook:
    """An HTTP server on loopback taking apprise's json:// POSTs; keeps each with its time."""

    port: int
    posts: list[Post] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def since(self, t: float) -> list[Post]:
        return [p for p in list(self.posts) if p.at >= t]

    @classmethod
    def start(cls) -> Webhook:
        from tests.support.ports import free_port

        hook = cls(free_port())

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                now = time.time()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    title = str(json.loads(body).get("title", ""))
                except ValueError:
                    title = "?"
                hook.posts.append(Post(now, self.path, title))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        hook.server = ThreadingHTTPServer(("127.0.0.1", hook.port), Handler)
        threading.Thread(target=hook.server.serve_forever, daemon=True, name="webhook").start()
        return hook

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# --- the fleet, taking power commands ---------------------------------------------------------

def _simulator_main(index: int, params: FleetParams, events: Any, commands: Any) -> None:
    try:
        raise_nofile()
        import logging

        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        asyncio.run(_simulate(index, params, events, commands))
    except BaseException as exc:  # report, never hang the parent
        report_failure(events, f"simulator {index}", exc)


async def _simulate(index: int, params: FleetParams, events: Any, commands: Any) -> None:
    from simulators.fleet import Fleet

    credentials = json.loads(Path(params.credentials[index]).read_text())
    fleet = Fleet("127.0.0.1", params.port, credentials, keepalive=params.keepalive,
                  telemetry_interval=params.telemetry_interval, attach_delay=(0.0, params.attach_delay),
                  seed=SEED + index)
    events.put(("sim-ready", index, len(credentials)))
    await fleet.start()
    receivers, truth = fleet.receivers, fleet.ground_truth
    next_status = 0.0
    while True:
        try:
            command = await asyncio.to_thread(commands.get, True, 0.2)
        except queue.Empty:
            command = None
        if command is not None:
            op, rids = command
            if op == "stop":
                break
            mine = [rid for rid in rids if rid in receivers]
            started = time.time()
            for rid in mine:
                if op == "power_loss":
                    await fleet.power_loss(rid)
                else:
                    await fleet.power_on(rid)
            events.put(("sim-done-op", index, op, len(mine), started, time.time()))
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + SIMULATOR_STATUS_S
            events.put(("sim-status", index, {
                "up": sum(1 for rid in receivers if truth.is_up(rid)),
                "telemetry": sum(rx.telemetry_sent for rx in receivers.values())}))
    await fleet.stop(clean=False)
    events.put(("sim-stopped", index))


class PoweredFleet:
    """``processes`` simulator processes over their share of the credentials; all receivers
    power on at start; ``power(op, rids)`` cuts or restores power and returns the wall-clock
    span in which the processes did it."""

    def __init__(self, params: FleetParams, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.events = ctx.Queue()
        self.commands = [ctx.Queue() for _ in range(processes)]
        self.processes = [ctx.Process(target=_simulator_main, args=(i, params, self.events, self.commands[i]),
                                      daemon=True, name=f"simulator-{i}") for i in range(processes)]
        self.status: dict[int, dict[str, Any]] = {}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def _next(self, timeout: float) -> tuple[Any, ...] | None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            dead = [p for p in self.processes if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(f"simulator process exited with {dead[0].exitcode}") from None
            return None
        if event[0] == "error":
            raise RuntimeError(event[1])
        if event[0] == "sim-status":
            self.status[event[1]] = event[2]
        return event

    def start(self) -> None:
        for p in self.processes:
            p.start()
        ready = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while ready < len(self.processes):
            if time.monotonic() > deadline:
                raise TimeoutError("simulator processes did not start")
            event = self._next(0.5)
            ready += bool(event and event[0] == "sim-ready")

    def poll(self) -> None:
        while self._next(0.0) is not None:
            pass

    def up(self) -> int:
        return sum(s["up"] for s in self.status.values())

    def telemetry(self) -> int:
        return sum(s["telemetry"] for s in self.status.values())

    def power(self, op: str, rids: list[str]) -> tuple[float, float]:
        for q in self.commands:
            q.put((op, rids))
        spans: list[tuple[float, float]] = []
        deadline = time.monotonic() + 60
        while len(spans) < len(self.processes):
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulators did not carry out {op}")
            event = self._next(0.5)
            if event and event[0] == "sim-done-op":
                spans.append((event[4], event[5]))
        return min(s for s, _ in spans), max(e for _, e in spans)

    def close(self) -> None:
        for q in self.commands:
            q.put(("stop", []))
        deadline = time.monotonic() + 30
        stopped = 0
        while stopped < len(self.processes) and time.monotonic() < deadline:
            try:
                event = self._next(0.5)
            except RuntimeError:
                break
            stopped += bool(event and event[0] == "sim-stopped")
        join_all(self.processes)


# --- the service's API and tables -------------------------------------------------------------

def api(service: Service, method: str, path: str, body: dict[str, Any]) -> Any:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://127.0.0.1:{service.api_port}/api/v1{path}", method=method,
                                     data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {service.token}",
                                              "Content-Type": "application/json"})
    try:
        with opener.open(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None


def configure_alerts(service: Service, layout: Layout, hook: Webhook, pending: int, hold: int) -> None:
    api(service, "PUT", "/alert-rules/offline", {"pending_s": pending, "hold_s": hold})
    crew = api(service, "POST", "/crews", {"name": "Đội Đại Từ", "region_id": layout.district_id})
    for position, (name, engineer) in enumerate(CREW):
        api(service, "POST", f"/crews/{crew['id']}/members",
            {"name": name, "position": position, "engineer": engineer, "channels": [hook.url(name_path(name))]})


def name_path(name: str) -> str:
    return {"An": "an", "Bình": "binh", "Chi": "chi"}.get(name, name.lower())


class Tables:
    """The service's database read-only (SQLite): live state, incidents, notifications."""

    def __init__(self, database: Path) -> None:
        self.connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10, check_same_thread=False)

    def offline(self) -> set[str]:
        return {r[0] for r in self.connection.execute("SELECT receiver_id FROM receiver_live_state WHERE NOT online")}

    def max_id(self, table: str) -> int:
        return self.connection.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]

    def incidents_after(self, first_id: int) -> list[dict[str, Any]]:
        cols = ("id", "kind", "scope", "parent_id", "suppressed_by", "state", "opened_at", "summary")
        rows = self.connection.execute(f"SELECT {', '.join(cols)} FROM incidents WHERE id > ?", (first_id,))
        return [dict(zip(cols, row, strict=True)) for row in rows]

    def unresolved(self) -> int:
        return self.connection.execute("SELECT count(*) FROM incidents WHERE state != 'resolved'").fetchone()[0]

    def notifications_after(self, first_id: int) -> Counter[str]:
        return Counter({f"{reason}/{state}": n for reason, state, n in self.connection.execute(
            "SELECT reason, state, count(*) FROM notifications WHERE id > ? GROUP BY reason, state", (first_id,))})


def _wall(stamp: Any) -> float | None:
    """A UTC timestamp as SQLite holds it, as wall-clock seconds."""
    if stamp is None:
        return None
    value = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()


# --- one service run --------------------------------------------------------------------------

def wait_online(service: Service, fleet: PoweredFleet, n: int, timeout: float) -> float:
    started = time.monotonic()
    next_progress = started + PROGRESS_EVERY_S
    while time.monotonic() - started < timeout:
        fleet.poll()
        status = service.status(10.0)
        written = status["counters"].get("ledger_written", 0) if status else 0
        if fleet.up() >= n and status and written >= n and status["ledger_backlog"] == 0:
            return time.monotonic() - started
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_EVERY_S
            print(f"  {time.monotonic() - started:5.0f} s  up {fleet.up()}  births in the ledger {written}",
                  flush=True)
        time.sleep(POLL_S)
    raise TimeoutError(f"not every receiver online after {timeout:.0f} s ({fleet.up()} up)")


def steady(cfg: argparse.Namespace, service: Service, fleet: PoweredFleet, sampler: CpuSampler,
           spy_out: str | None) -> dict[str, Any]:
    """``--steady`` seconds with every receiver up: the service's CPU and its telemetry."""
    wait_idle(cfg.settle, "the steady window")
    spy = attach_py_spy(service.pid, spy_out, rate=100, duration_s=cfg.steady) if spy_out else None
    before = service.status(30.0)
    t0 = time.monotonic()
    sent0 = fleet.telemetry()
    while time.monotonic() - t0 < cfg.steady:
        fleet.poll()
        time.sleep(POLL_S)
    fleet.poll()
    t1 = time.monotonic()
    after = service.status(30.0)
    wait_py_spy(spy)
    if not before or not after:
        raise RuntimeError("the service's status did not answer")
    accepted = after["counters"]["accepted"] - before["counters"]["accepted"]
    cpu = sampler.seconds("service", t0, t1)
    return {"seconds": t1 - t0, "accepted": accepted, "sent": fleet.telemetry() - sent0, "cpu_s": cpu,
            "us_per_msg": 1e6 * cpu / accepted if accepted else float("nan"),
            "cores": sampler.cores(t0, t1), "turns": after.get("alert_turns", 0) - before.get("alert_turns", 0)}


def phase(name: str, cfg: argparse.Namespace, fleet: PoweredFleet, tables: Tables, hook: Webhook,
          rids: list[str], commune_of: dict[str, str]) -> dict[str, Any]:
    """Cut the power of ``rids`` at once, watch until the crews have been told, and measure."""
    first_incident, first_note = tables.max_id("incidents"), tables.max_id("notifications")
    wait_idle(cfg.settle, name)
    t0, t_cut = fleet.power("power_loss", rids)
    print(f"{name}: power cut at {len(rids)} receivers ({t_cut - t0:.2f} s to cut them all)", flush=True)
    targets = set(rids)
    seen_first = seen_all = None
    deadline = time.monotonic() + cfg.phase_timeout
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    while time.monotonic() < deadline:
        fleet.poll()
        now = time.time()
        off = len(targets & tables.offline())
        if off and seen_first is None:
            seen_first = now
        if off == len(targets) and seen_all is None:
            seen_all = now
        posts = hook.since(t0)
        last_post = max((p.at for p in posts), default=seen_all or now)
        if seen_all is not None and now - seen_all >= cfg.pending + 15 and now - last_post >= QUIET_S:
            break
        if time.monotonic() >= next_progress:
            next_progress = time.monotonic() + PROGRESS_EVERY_S
            print(f"  {now - t0:5.0f} s  offline {off}/{len(targets)}  messages {len(posts)}", flush=True)
        time.sleep(POLL_S)
    posts = hook.since(t0)
    incidents = tables.incidents_after(first_incident)
    told = [i for i in incidents if i["parent_id"] is None and i["suppressed_by"] is None]
    opened = [_wall(i["opened_at"]) for i in incidents]
    return {
        "name": name, "cut": len(rids), "communes": len({commune_of[r] for r in rids}), "t0": t0,
        "cut_s": t_cut - t0,
        "offline_first_s": seen_first - t0 if seen_first else None,
        "offline_all_s": seen_all - t0 if seen_all else None,
        "incident_first_s": min(opened) - t0 if opened else None,
        "messages": len(posts),
        "first_s": min(p.at for p in posts) - t0 if posts else None,
        "last_s": max(p.at for p in posts) - t0 if posts else None,
        "messages_group": sum(1 for p in posts if ": rx-" not in p.title),
        "messages_receiver": sum(1 for p in posts if ": rx-" in p.title),
        "by_channel": dict(Counter(p.path for p in posts)),
        "incidents": dict(Counter(i["scope"] for i in incidents)),
        "told": dict(Counter(i["scope"] for i in told)),
        "members": sum(1 for i in incidents if i["parent_id"] is not None),
        "notifications": dict(tables.notifications_after(first_note)),
        "titles": [p.title for p in posts[:3]],
    }


def restore(cfg: argparse.Namespace, fleet: PoweredFleet, tables: Tables, hook: Webhook,
            rids: list[str]) -> dict[str, Any]:
    """Power ``rids`` on again and wait until every incident has resolved and been told so."""
    t0, _ = fleet.power("power_on", rids)
    print(f"power back at {len(rids)} receivers; waiting for their incidents to resolve", flush=True)
    deadline = time.monotonic() + cfg.phase_timeout
    resolved_at = None
    while time.monotonic() < deadline:
        fleet.poll()
        now = time.time()
        if resolved_at is None and tables.unresolved() == 0:
            resolved_at = now
        posts = hook.since(t0)
        if resolved_at is not None and now - max([resolved_at] + [p.at for p in posts]) >= QUIET_S:
            break
        time.sleep(POLL_S)
    posts = hook.since(t0)
    return {"resolved_s": resolved_at - t0 if resolved_at else None, "messages": len(posts)}


def service_run(cfg: argparse.Namespace, workdir: Path, registry: Registry, layout: Layout, alerts_on: bool,
                hook: Webhook) -> dict[str, Any]:
    label = "on" if alerts_on else "off"
    run_dir = workdir / f"alerts-{label}"
    run_dir.mkdir()
    n = len(registry.credentials)
    auth = write_broker_files(run_dir / "auth", registry.credentials)
    cred_files = split_credentials(run_dir, registry.credentials, cfg.simulators)
    facts: dict[str, Any] = {"alerts": label}
    with start_broker(run_dir / "broker", auth, production_tuning()) as broker:
        service: Service | None = None
        fleet: PoweredFleet | None = None
        sampler: CpuSampler | None = None
        try:
            service = start_service(run_dir, registry, broker.port, auth.service_password,
                                    telemetry_interval=cfg.telemetry_interval,
                                    python_module=None if alerts_on else "bench.alerts",
                                    env=None if alerts_on else {ENV_SWITCH: "off"})
            if alerts_on:
                configure_alerts(service, layout, hook, cfg.pending, cfg.hold)
            # The service's fixed costs (status reports, sweeps, the API's polls) with no
            # receiver connected: at one message a second per 60 receivers they are most of its
            # CPU, and are taken off to get ingest's own cost per message.
            wait_idle(cfg.settle, "the idle window")
            idle_from, idle_cpu = time.monotonic(), cpu_seconds(service.pid)
            time.sleep(cfg.idle)
            facts["idle_cores"] = (cpu_seconds(service.pid) - idle_cpu) / (time.monotonic() - idle_from)
            fleet = PoweredFleet(FleetParams(broker.port, cred_files, cfg.keepalive, cfg.telemetry_interval,
                                             cfg.attach_delay), cfg.simulators)
            fleet.start()
            sampler = CpuSampler({"service": [service.pid], "broker": [broker.pid], "simulators": fleet.pids},
                                 interval_s=1.0, deadline_s=24 * 3600)
            sampler.start()
            print(f"alerts {label}: {n} receivers power on", flush=True)
            facts["online_s"] = wait_online(service, fleet, n, cfg.phase_timeout)
            print(f"alerts {label}: all online after {facts['online_s']:.0f} s; warming up {cfg.warmup:g} s", flush=True)
            time.sleep(cfg.warmup)
            facts["steady"] = steady(cfg, service, fleet, sampler, cfg.py_spy if alerts_on else None)
            s = facts["steady"]
            print(f"alerts {label}: steady {s['seconds']:.0f} s, {s['accepted']} messages, service CPU "
                  f"{s['cpu_s']:.2f} s = {s['us_per_msg']:.0f} µs per message", flush=True)
            if alerts_on:
                tables = Tables(service.database)
                commune_of = layout.commune_of()
                first = layout.communes[0][2]
                facts["phase1"] = phase("phase 1 (a commune)", cfg, fleet, tables, hook, first, commune_of)
                facts["restore"] = restore(cfg, fleet, tables, hook, first)
                everyone = [rid for _, _, rids in layout.communes for rid in rids]
                facts["phase2"] = phase("phase 2 (the district)", cfg, fleet, tables, hook, everyone, commune_of)
                facts["status"] = service.status(30.0)
        finally:
            if sampler is not None:
                sampler.stop()
            if fleet is not None:
                fleet.close()
            if service is not None:
                service.stop()
                facts["log"] = {"warnings": service.log_count("WARNING"), "errors": service.log_count("ERROR")}
    return facts


# --- report -----------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def py_spy_share(path: str) -> str:
    """Share of the service's samples with a frame of fleet_service/alerts on the stack."""
    total = alerts = evaluator = notifier = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if count.isdigit():
                    n = int(count)
                    total += n
                    alerts += n if "fleet_service/alerts/" in stack else 0
                    evaluator += n if "fleet_service/alerts/evaluator.py" in stack else 0
                    notifier += n if "fleet_service/alerts/notify.py" in stack else 0
    except OSError:
        return ""
    return (f"- py-spy over the alerts-on steady window (100 Hz, active threads only): {alerts} of {total} samples "
            f"of the service ({100 * alerts / total:.1f} %) have a frame of fleet_service/alerts on the stack: "
            f"evaluator {100 * evaluator / total:.1f} %, notifier {100 * notifier / total:.1f} %") if total else ""


def report(cfg: argparse.Namespace, info: dict[str, str], registry: Registry, layout: Layout,
           runs: dict[str, dict[str, Any]]) -> str:
    off, on = runs["off"]["steady"], runs["on"]["steady"]
    added = on["us_per_msg"] - off["us_per_msg"]
    idle_cores = runs["off"]["idle_cores"]
    ingest = 1e6 * (off["cpu_s"] - idle_cores * off["seconds"]) / off["accepted"] if off["accepted"] else float("nan")
    share = added / ingest if ingest > 0 else float("nan")
    whole = added / off["us_per_msg"] if off["us_per_msg"] else float("nan")
    n = len(registry.credentials)
    per_commune = cfg.per_station * cfg.stations_per_commune
    lines = [
        machine_line(info, source=True),
        f"- registry: {n:,} receivers in 1 province, 1 district, {len(layout.communes)} communes × "
        f"{cfg.stations_per_commune} stations × {cfg.per_station} receivers ({per_commune} per commune), SQLite, "
        f"{registry.seconds:.0f} s to provision",
        f"- fleet: {cfg.simulators} simulator processes (`simulators.fleet.Fleet`), keepalive {cfg.keepalive} s, "
        f"telemetry every {cfg.telemetry_interval:g} s, attach delay 0–{cfg.attach_delay:g} s; power loss = "
        "`Fleet.power_loss` (no goodbye, no FIN: the broker sends the Will at the keepalive timeout, 1.5 × keepalive "
        "after the receiver's last packet)",
        f"- service: `loa serve`, LOA_BROKER=external, a private Mosquitto (production tuning), SQLite; rule "
        f"`offline` overridden service-wide to pending {cfg.pending} s, hold-down {cfg.hold} s (defaults 300 / 180); "
        f"crew 'Đội Đại Từ' for the district: An (on call), Bình (next), Chi (engineer), one json:// channel each to "
        "a webhook receiver on loopback; default escalation (15 and 30 min: past the end of each phase)",
        f"- CPU: two service runs on the same registry and fleet: **off** = `python -m bench.alerts serve` (`loa "
        f"serve` with the alert evaluator's and notifier's loops never started), **on** = `loa serve`; each "
        f"measured over {cfg.steady:g} s once every receiver was online and {cfg.warmup:g} s had passed; CPU of the "
        "service process from /proc, messages = its ingest counter `accepted`",
        "",
        "| steady window | seconds | messages accepted | msg/s | service CPU | µs CPU per message | alert turns |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in (("alerts off", off), ("alerts on", on)):
        lines.append(f"| {label} | {s['seconds']:.0f} | {s['accepted']:,} | {s['accepted'] / s['seconds']:.0f} | "
                     f"{s['cpu_s']:.2f} s | {s['us_per_msg']:.0f} | {s['turns']} |")
    goal = "meets" if share <= 0.20 else "misses"
    lines += ["", f"- the service with no receiver connected (alerts off): {idle_cores:.4f} cores; ingest's own cost, "
              f"(CPU − that × seconds) / messages: **{ingest:.0f} µs per message**",
              f"- alerts add **{added:+.0f} µs per telemetry message**: **{100 * share:+.0f} %** of ingest's own cost "
              f"(goal ≤ 20 %: {goal}); {100 * whole:+.0f} % of the whole service's CPU per message with alerts off"]
    spy = py_spy_share(cfg.py_spy) if cfg.py_spy else ""
    if spy:
        lines.append(spy)
    lines += ["", "| phase | receivers cut | power cut → live state offline (first / all) | → first incident | "
              "messages | → first message | → last message | incidents told (scope) | members grouped |",
              "|---|---:|---|---:|---:|---:|---:|---|---:|"]
    for key in ("phase1", "phase2"):
        p = runs["on"].get(key)
        if not p:
            continue
        told = ", ".join(f"{k} {v}" for k, v in sorted(p["told"].items())) or "none"
        lines.append(f"| {p['name']} | {p['cut']:,} ({p['communes']} commune{'s' if p['communes'] != 1 else ''}) | {_s(p['offline_first_s'])} / "
                     f"{_s(p['offline_all_s'])} | {_s(p['incident_first_s'])} | **{p['messages']}** "
                     f"({p['messages_group']} grouped, {p['messages_receiver']} about one receiver) | "
                     f"**{_s(p['first_s'])}** | {_s(p['last_s'])} | {told} | {p['members']} |")
    r = runs["on"].get("restore")
    if r:
        lines.append(f"\n- between the phases the commune was powered on again: every incident resolved "
                     f"{_s(r['resolved_s'])} later; {r['messages']} resolution messages")
    for key in ("phase1", "phase2"):
        p = runs["on"].get(key)
        if p:
            lines.append(f"- {p['name']}: messages per channel {p['by_channel']}; notification rows "
                         f"{p['notifications']}; first titles: " + " | ".join(f"`{t}`" for t in p["titles"]))
    logs = {k: v.get("log", {}) for k, v in runs.items()}
    lines.append("- service log: " + "; ".join(f"alerts {k}: {v.get('warnings', 0)} warnings, "
                                               f"{v.get('errors', 0)} errors" for k, v in logs.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "serve":
        serve()
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.alerts", description=__doc__.split("\n\n")[0])
    add_fleet_options(parser, receivers=10000)
    parser.add_argument("--per-station", type=int, default=20, help="receivers per station (default 20)")
    parser.add_argument("--stations-per-commune", type=int, default=5, help="stations per commune (default 5)")
    parser.add_argument("--pending", type=int, default=30,
                        help="the offline rule's pending time, s, set service-wide (default 30; shipped 300)")
    parser.add_argument("--hold", type=int, default=30,
                        help="the offline rule's hold-down, s, set service-wide (default 30; shipped 180)")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="after every receiver is online, before the steady window, s (default 30)")
    parser.add_argument("--steady", type=float, default=300.0,
                        help="the steady window, s (default 300: one whole evaluation turn falls in it)")
    parser.add_argument("--idle", type=float, default=30.0,
                        help="the service's CPU with no receiver connected is measured this long, s (default 30)")
    parser.add_argument("--phase-timeout", type=float, default=600.0, help="longest wait of a phase, s (default 600)")
    parser.add_argument("--py-spy", metavar="FILE",
                        help="also sample the alerts-on steady window with py-spy (PATH or PY_SPY) into FILE and "
                             "report the share of samples in fleet_service/alerts")
    add_run_options(parser, settle=30.0)
    cfg = parser.parse_args(args)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="loa-bench-alerts-") as tmp:
        workdir = Path(cfg.keep).resolve() if cfg.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        registry, layout = make_district(workdir, cfg.receivers, cfg.per_station, cfg.stations_per_commune)
        print(f"registry: {cfg.receivers} receivers, {len(layout.communes)} communes, {registry.seconds:.0f} s",
              flush=True)
        hook = Webhook.start()
        try:
            runs = {"off": service_run(cfg, workdir, registry, layout, False, hook)}
            runs["on"] = service_run(cfg, workdir, registry, layout, True, hook)
        finally:
            hook.stop()
    section = report(cfg, info, registry, layout, runs)
    results_section(f"alerts when a commune and a district lose power, {cfg.receivers:,} receivers", "alerts.py",
                    command_line("bench.alerts", argv), section, append=cfg.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
