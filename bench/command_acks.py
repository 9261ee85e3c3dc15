"""A play command to N receivers: time until every receiver acknowledged it, through the fleet
service and as a raw MQTT round trip, in the same run on the same broker and receivers.

One invocation registers and provisions ``--receivers`` receivers in a SQLite registry, starts
one private Mosquitto (password file and per-receiver ACL from the same passwords) and
``--responder-processes`` processes of responders: one MQTT connection per receiver
(``simulators.mqtt.MqttClient``), logged in as that receiver, with a retained birth, subscribed
to its own ``.../cmd`` at QoS 1, answering every command at once with an ack ``done`` on
``.../ack`` (QoS 1). Then, ``--repeat`` times:

- **raw**: one paho client (logged in as the service) publishes the same play command, QoS 1,
  to each of the N cmd topics and counts the acks on ``loa/v1/rx/+/ack``: time from the first
  publish until 50 / 99 / 100 % of the acks arrived;
- **service**: the service's MQTT side (``run_telemetry`` + ``run_mqtt_side``, broker
  ``external``, as ``loa serve`` runs it, without the HTTP server) in its own process on a copy
  of the registry; once it has every receiver online, one play command to the whole fleet
  through ``commands.service.create_command`` (committed in a worker thread, as the API does)
  and ``runtime.commands.submit``: time from the request until 50 / 99 / 100 % of the targets
  are acknowledged as ``CommandDelivery.progress()`` sees it (polled every 10 ms), and until
  the outcomes are in the database (``CommandDelivery.flush()``).

    python -m bench.command_acks                       # 2,000 receivers, ~1 min
    python -m bench.command_acks --receivers 10000 --append bench/RESULTS.md

See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import multiprocessing as mp
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    SERVICE_USER,
    Broker,
    CpuSampler,
    SysObserver,
    add_run_options,
    attach_py_spy,
    command_line,
    copy_registry,
    expect,
    join_all,
    machine,
    machine_line,
    make_registry,
    open_files_limit,
    production_tuning,
    raise_nofile,
    receiver_ids,
    report_failure,
    results_section,
    split_credentials,
    start_broker,
    wait_idle,
    wait_py_spy,
    write_broker_files,
)
from fleet_service.protocol.codec import CommandError, decode_command
from fleet_service.protocol.topics import TOPIC_ROOT, MessageKind, command_topic, receiver_topics

# --- tuning ---------------------------------------------------------------------------------

# The service's view of a command is polled this often (the brief of the measurement: 10 ms).
PROGRESS_POLL_S = 0.01
# Thresholds reported: share of the targets acknowledged.
SHARES = (0.50, 0.99, 1.00)
# Goal for N = 10,000 on this machine: 99 % acknowledged within this many seconds ...
GOAL_99_S = 2.0
# ... and at most this many times the raw round trip.
GOAL_RATIO = 1.5
# Responders connecting at once per process: enough to connect 10,000 in seconds, few enough
# that Mosquitto's listen backlog never overflows (a dropped SYN costs a 1 s retransmit).
CONNECT_CONCURRENCY = 200
CONNECT_TIMEOUT_S = 30.0
CONNECT_ATTEMPTS = 5
# Responders' keepalive: longer than any run, so that no PINGREQ lands inside a measurement.
RESPONDER_KEEPALIVE_S = 600
# A raw phase with this QoS 1 in-flight window beside the one without (the service has none since
# the window was measured to cost O(window) per PUBACK in paho): the goal is judged against the
# faster raw phase.
RAW_INFLIGHT = 1000
# Upper bounds on single waits: a process starting, the fleet connecting, the service seeing it.
START_TIMEOUT_S = 300.0
# Waiting for the acks of one phase.
PHASE_TIMEOUT_S = 120.0
# CPU is sampled this often (interpolated between samples).
SAMPLE_INTERVAL_S = 0.05
STREAM_URL = "http://127.0.0.1/loa-bench.mp3"
SESSION = 1
# Runs of each database-side variant in --breakdown; the least CPU counts.
WRITE_COST_RUNS = 3

RAW, SERVICE = "raw", "service"


def wire_command(now: float) -> tuple[str, bytes]:
    """A fresh play command as receivers get it (the service's own encoder): (id, payload)."""
    from datetime import UTC, datetime, timedelta

    from fleet_service.commands.service import new_command_id, wire_payload
    from fleet_service.protocol.messages import CommandOp, Priority

    issued = datetime.fromtimestamp(int(now), UTC)
    command_id = new_command_id()
    payload = wire_payload(command_id, CommandOp.PLAY, Priority.NORMAL, {"url": STREAM_URL}, issued,
                           issued + timedelta(minutes=15))
    return command_id, payload


# --- responders -----------------------------------------------------------------------------

class Responder:
    """One receiver's MQTT session: answers every command on its cmd topic at once."""

    __slots__ = ("client", "ack_topic", "stats")

    def __init__(self, rid: str, stats: Counter[str]) -> None:
        self.client: Any = None
        self.ack_topic = f"{TOPIC_ROOT}/{rid}/ack"
        self.stats = stats

    def mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        self.stats["commands"] += 1
        try:
            command_id, status, why = decode_command(payload).command_id, "done", ""
        except CommandError as exc:
            if exc.command_id is None:
                self.stats["unanswerable"] += 1
                return
            command_id, status, why = exc.command_id, "rejected", f',"why":"{exc.reason.value}"'
        body = f'{{"v":1,"session":{SESSION},"id":"{command_id}","st":"{status}"{why},"ts":{int(time.time())}}}'
        self.client.publish_nowait(self.ack_topic, body.encode(), qos=1)
        self.stats["acks"] += 1

    def mqtt_lost(self, reason: BaseException) -> None:
        self.stats["lost"] += 1


def _responders_main(index: int, params: dict[str, Any], events: Any, stop: Any) -> None:
    try:
        limit = raise_nofile()
        asyncio.run(_respond(index, params, events, stop, limit))
    except BaseException as exc:  # report, never hang the parent
        report_failure(events, f"responders {index}", exc)


async def _respond(index: int, params: dict[str, Any], events: Any, stop: Any, limit: int) -> None:
    from fleet_service.protocol.messages import State, StateMessage, StateReason
    from fleet_service.protocol.topics import COMMAND_QOS
    from simulators.link import Link
    from simulators.mqtt import MqttClient, Will

    credentials: dict[str, str] = json.loads(Path(params["credentials"][index]).read_text())
    stats: Counter[str] = Counter()
    responders: list[Responder] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    birth = StateMessage(state=State.ONLINE, session=SESSION, reason=StateReason.BOOT, firmware="bench")
    will = StateMessage(state=State.OFFLINE, session=SESSION, reason=StateReason.LOST)

    def encode(message: Any) -> bytes:
        return message.model_dump_json(by_alias=True, exclude_none=True).encode()

    async def start(rid: str, password: str) -> None:
        responder = Responder(rid, stats)
        state = receiver_topics(rid)[MessageKind.STATE]
        for attempt in range(CONNECT_ATTEMPTS):
            async with gate:
                try:
                    conn = await Link().open("127.0.0.1", params["port"], timeout=CONNECT_TIMEOUT_S)
                    client = MqttClient(conn, client_id=rid, username=rid, password=password,
                                        keepalive=RESPONDER_KEEPALIVE_S, handler=responder,
                                        will=Will(state, encode(will)))
                    await client.connect(timeout=CONNECT_TIMEOUT_S)
                    responder.client = client
                    await client.publish(state, encode(birth), qos=1, retain=True, timeout=CONNECT_TIMEOUT_S)
                    await client.subscribe([(command_topic(rid), COMMAND_QOS)], timeout=CONNECT_TIMEOUT_S)
                    responders.append(responder)
                    return
                except Exception as exc:  # refused, timed out, reset: counted by kind, tried again
                    stats[f"connect_error:{exc.__class__.__name__}"] += 1
            await asyncio.sleep(0.5 * (attempt + 1))
        stats["not_connected"] += 1

    started = time.monotonic()
    await asyncio.gather(*(start(rid, pw) for rid, pw in credentials.items()))
    stats["lost"] = 0  # losses before the first measurement are retries, counted above
    events.put(("responders-ready", index, {"connected": len(responders), "of": len(credentials),
                                            "seconds": time.monotonic() - started, "nofile": limit,
                                            "errors": {k: v for k, v in stats.items() if k != "lost"}}))
    await asyncio.to_thread(stop.wait)
    report = {**stats, "still_connected": sum(1 for r in responders if r.client.connected)}
    for responder in responders:
        responder.client.disconnect()
    events.put(("responders-done", index, report))


# --- the raw phase --------------------------------------------------------------------------

def _raw_main(params: dict[str, Any], events: Any, go: Any) -> None:
    try:
        events.put(("raw-done", _raw(params, events, go)))
    except BaseException as exc:
        report_failure(events, "raw client", exc)


def _raw(params: dict[str, Any], events: Any, go: Any) -> dict[str, Any]:
    import paho.mqtt.client as mqtt

    from fleet_service.protocol.codec import decode
    from fleet_service.protocol.messages import Ack, AckStatus

    n = params["receivers"]
    topics = [command_topic(rid) for rid in receiver_ids(n)]
    command_id, payload = params["command_id"], params["payload"]
    arrivals: list[tuple[float, str, bytes]] = []
    all_in, subscribed = threading.Event(), threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        arrivals.append((time.monotonic(), message.topic, message.payload))
        if len(arrivals) >= n:
            all_in.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw", clean_session=True,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(SERVICE_USER, params["password"])
    client.max_inflight_messages_set(params["inflight"])
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", params["port"], keepalive=60)
    client.loop_start()
    try:
        client.subscribe(f"{TOPIC_ROOT}/+/ack", qos=1)
        if not subscribed.wait(30):
            raise RuntimeError("raw client: not subscribed")
        events.put(("raw-ready",))
        if not go.wait(START_TIMEOUT_S):
            raise RuntimeError("raw client: never told to start")
        t0 = time.monotonic()
        for topic in topics:
            client.publish(topic, payload, qos=1)
        handed = time.monotonic()
        all_in.wait(PHASE_TIMEOUT_S)
        t_end = time.monotonic()
    finally:
        client.disconnect()
        client.loop_stop()
    # Checked after the clock stopped: each ack a valid protocol Ack for this command.
    first: dict[str, float] = {}
    bad = 0
    for t, topic, body in arrivals:
        try:
            message = decode(topic, body, max_bytes=4096)
        except ValueError:
            bad += 1
            continue
        ok = isinstance(message.message, Ack) and message.message.command_id == command_id \
            and message.message.status is AckStatus.DONE
        if not ok:
            bad += 1
        elif message.topic.receiver_id not in first:
            first[message.topic.receiver_id] = t
    times = sorted(first.values())
    return {"t0": t0, "handed_s": handed - t0, "first_ack_s": times[0] - t0 if times else None, "end": t_end, "received": len(arrivals), "receivers": len(first),
            "bad": bad, "at": {s: times[math.ceil(s * n) - 1] - t0 if len(times) >= math.ceil(s * n) else None
                               for s in SHARES}}


# --- the service phase ----------------------------------------------------------------------

def _service_main(params: dict[str, Any], events: Any, go: Any) -> None:
    try:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        events.put(("service-done", asyncio.run(_service(params, events, go))))
    except BaseException as exc:
        report_failure(events, "service", exc)


async def _service(params: dict[str, Any], events: Any, go: Any) -> dict[str, Any]:
    from fleet_service.auth.models import Role
    from fleet_service.commands import repository
    from fleet_service.commands import service as commands
    from fleet_service.commands.models import TargetStatus
    from fleet_service.commands.schemas import CommandCreate, Target
    from fleet_service.config import Settings
    from fleet_service.db import session_scope
    from fleet_service.worker.composition import run_mqtt_side
    from fleet_service.protocol.messages import CommandOp
    from fleet_service.runtime import Runtime
    from fleet_service.telemetry.service import run_telemetry

    n = params["receivers"]
    for name, value in params["what_if"].items():  # tuning constants replaced for this run (--what-if)
        module, _, constant = name.rpartition(".")
        setattr(importlib.import_module(module), constant, value)
    settings = Settings(environment="local", database_url=params["database_url"], broker="external",
                        mqtt_host="127.0.0.1", mqtt_port=params["port"], mqtt_username=SERVICE_USER,
                        mqtt_password=params["password"], influx_buffer_dir=params["buffer_dir"])
    runtime = Runtime.from_settings(settings)
    unacked = {TargetStatus.PENDING.value, TargetStatus.SENT.value}
    try:
        started = time.monotonic()
        async with run_telemetry(runtime), run_mqtt_side(runtime, wait_connected_s=START_TIMEOUT_S):
            ingest, delivery = runtime.ingest, runtime.commands
            deadline = time.monotonic() + START_TIMEOUT_S
            while ingest.tracker.counts()[0] < n:  # the retained births, read at subscribe
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service sees {ingest.tracker.counts()[0]} of {n} receivers online")
                await asyncio.sleep(0.05)
            await ingest.flush()
            online_after_s = time.monotonic() - started
            # The command goes to a service at rest, as in the field: not while it still digests
            # its own start (10,000 births' schedule checks, their live-state rows).
            while runtime.schedules is not None and runtime.schedules.checked < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the service checked {runtime.schedules.checked} of {n} schedules")
                await asyncio.sleep(0.05)
            await ingest.write_live_state(everything=True)
            await ingest.flush()
            events.put(("service-ready", {"online_after_s": online_after_s,
                                          "settled_after_s": time.monotonic() - started}))
            if not await asyncio.to_thread(go.wait, START_TIMEOUT_S):
                raise RuntimeError("service: never told to start")

            issuer = commands.Issuer(None, "bench", Role.ADMIN, None)
            request = CommandCreate(target=Target(fleet=True), op=CommandOp.PLAY, url=STREAM_URL)

            def create() -> commands.Created:  # what POST /api/v1/commands does in its worker thread
                with session_scope(runtime.sessions) as session:
                    return commands.create_command(session, request, issuer)

            t0 = time.monotonic()
            created = await asyncio.to_thread(create)
            t_created = time.monotonic()
            cid = created.command.id
            delivery.submit(cid, created.command.op, created.payload, created.command.expires_at, created.receiver_ids)
            targets = len(created.receiver_ids)
            need = {s: math.ceil(s * targets) for s in SHARES}
            at: dict[float, float | None] = dict.fromkeys(SHARES)
            all_sent: float | None = None
            first_ack: float | None = None
            polls = 0
            progress: dict[str, int] = {}
            deadline = t0 + PHASE_TIMEOUT_S
            while time.monotonic() < deadline:
                progress = delivery.progress(cid) or {}
                polls += 1
                now = time.monotonic()
                if all_sent is None and progress and not progress.get(TargetStatus.PENDING.value):
                    all_sent = now - t0
                acked = sum(v for k, v in progress.items() if k not in unacked)
                if first_ack is None and acked:
                    first_ack = now - t0
                for share in SHARES:
                    if at[share] is None and acked >= need[share]:
                        at[share] = now - t0
                if at[1.0] is not None:
                    break
                await asyncio.sleep(PROGRESS_POLL_S)
            await delivery.flush()
            t_db = time.monotonic()
            with session_scope(runtime.sessions) as session:
                stored = repository.status_counts(session, [cid])[cid]
            counters = delivery.counters.as_dict()
            ingest_counters = ingest.counters.as_dict()
    finally:
        runtime.close()
    return {"t0": t0, "created_s": t_created - t0, "all_sent_s": all_sent, "first_ack_s": first_ack, "at": at, "db_s": t_db - t0,
            "end": t0 + (at[1.0] or PHASE_TIMEOUT_S), "db_end": t_db, "targets": targets, "progress": progress,
            "stored": stored, "delivery": counters, "ingest": ingest_counters, "polls": polls}


# --- one phase ------------------------------------------------------------------------------

@dataclass
class Phase:
    kind: str
    round: int
    at: dict[float, float | None]   # share -> seconds from the start (first publish / the request)
    cpu: dict[str, float] = field(default_factory=dict)        # over start -> 100 %
    cpu_db: dict[str, float] = field(default_factory=dict)     # service: over the request -> in the database
    broker_dropped: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"raw, window {_window(self.facts['inflight'])}" if self.kind == RAW else "service"


@dataclass
class Setup:
    n: int
    port: int
    broker: Broker
    observer: SysObserver
    password: str
    registry_db: Path
    workdir: Path
    responder_pids: list[int]
    raw_inflight: list[int] = field(default_factory=lambda: [RAW_INFLIGHT])
    what_if: dict[str, Any] = field(default_factory=dict)  # service tuning constants replaced


def phase_sampler(setup: Setup, role: str, pid: int) -> CpuSampler:
    """CPU of the broker, the responders and the phase's publisher (``role``)."""
    return CpuSampler({"broker": [setup.broker.pid], "responders": setup.responder_pids, role: [pid]},
                      interval_s=SAMPLE_INTERVAL_S, deadline_s=PHASE_TIMEOUT_S + 2 * START_TIMEOUT_S)


def _dropped(setup: Setup) -> float:
    return setup.observer.latest("publish/messages/dropped") or 0.0


def run_raw(setup: Setup, number: int, inflight: int) -> Phase:
    command_id, payload = wire_command(time.time())
    ctx = mp.get_context("spawn")
    events, go = ctx.Queue(), ctx.Event()
    params = {"receivers": setup.n, "port": setup.port, "password": setup.password, "command_id": command_id,
              "payload": payload, "inflight": inflight}
    process = ctx.Process(target=_raw_main, args=(params, events, go), daemon=True, name="raw-client")
    process.start()
    try:
        expect(events, "raw-ready", watch=[process])
        dropped = _dropped(setup)
        sampler = phase_sampler(setup, "client", process.pid)
        sampler.start()
        time.sleep(0.2)
        go.set()
        result = expect(events, "raw-done", timeout=PHASE_TIMEOUT_S + 60, watch=[process])[1]
        time.sleep(0.1)
        sampler.stop()
    finally:
        join_all([process])
    phase = Phase(RAW, number, result["at"], facts={**result, "inflight": inflight})
    end = result["t0"] + (result["at"][1.0] or PHASE_TIMEOUT_S)
    phase.cpu = sampler.cores(result["t0"], end)
    phase.facts["cpu_s"] = sampler.seconds("client", result["t0"], end)
    time.sleep(1.5)  # one more $SYS report
    phase.broker_dropped = _dropped(setup) - dropped
    return phase


def run_service(setup: Setup, number: int, spy: str | None = None) -> Phase:
    rundir = setup.workdir / f"service-{number}"
    rundir.mkdir()
    database_url = copy_registry(setup.registry_db, rundir / "service.db")
    ctx = mp.get_context("spawn")
    events, go = ctx.Queue(), ctx.Event()
    params = {"receivers": setup.n, "port": setup.port, "password": setup.password,
              "database_url": database_url, "buffer_dir": str(rundir / "telemetry-buffer"),
              "what_if": setup.what_if}
    process = ctx.Process(target=_service_main, args=(params, events, go), daemon=True, name="service")
    process.start()
    pid = process.pid
    assert pid is not None  # started
    spying = None
    try:
        ready = expect(events, "service-ready", watch=[process])[1]
        if spy:
            spying = attach_py_spy(pid, spy, rate=500, gil=True, duration_s=PHASE_TIMEOUT_S + 60)
        dropped = _dropped(setup)
        sampler = phase_sampler(setup, "service", pid)
        sampler.start()
        time.sleep(0.2)
        go.set()
        result = expect(events, "service-done", timeout=PHASE_TIMEOUT_S + 120, watch=[process])[1]
        sampler.stop()
    finally:
        join_all([process], 60)
        wait_py_spy(spying)
    phase = Phase(SERVICE, number, result["at"], facts={**result, **ready})
    phase.cpu = sampler.cores(result["t0"], result["end"])
    phase.cpu_db = sampler.cores(result["t0"], result["db_end"])
    phase.facts["cpu_s"] = sampler.seconds("service", result["t0"], result["end"])
    phase.facts["cpu_db_s"] = sampler.seconds("service", result["t0"], result["db_end"])
    time.sleep(1.5)
    phase.broker_dropped = _dropped(setup) - dropped
    return phase


# --- where the service's time goes (py-spy) -------------------------------------------------

# Frames on (nearly) every stack, which say nothing about where the time goes.
SPY_PLUMBING = ("multiprocessing/", "asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "<string>",
                "threading.py", "concurrent/futures/thread.py", "bench/command_acks.py")


def spy_summary(path: str, top: int = 22) -> str:
    """The functions on the stack in most samples of the service process (inclusive) and those
    most often on top (self), from py-spy's collapsed stacks."""
    total = in_threads = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            total += k
            frames = [frame.rsplit(":", 1)[0] for frame in stack.split(";")]
            for frame in set(frames):
                if not any(part in frame for part in SPY_PLUMBING):
                    inclusive[frame] += k
            own[frames[-1]] += k
            if "Thread.run" in stack:
                in_threads += k
    if not total:
        return "no samples"
    lines = [f"py-spy: {total} samples of the service process (the thread holding the GIL), {100 * in_threads / total:.1f}% "
             "of them in worker threads (the command's INSERT and the outcome UPDATEs), the rest in the event loop's thread", "",
             "on the stack (inclusive, process and event-loop plumbing left out):"]
    lines += [f"  {100 * k / total:5.1f}%  {frame}" for frame, k in inclusive.most_common(top)]
    lines += ["", "on top (self):"] + [f"  {100 * k / total:5.1f}%  {frame}" for frame, k in own.most_common(top)]
    return "\n".join(lines)


# --- the database side alone (--breakdown) ------------------------------------------------

def write_costs(workdir: Path, registry_db: Path, n: int) -> dict[str, float]:
    """CPU seconds, in this process, of a fleet-wide command's database work: the request, then
    the outcome rows as CommandDelivery writes them (a "sent" row and a "done" row per target, in
    batches of WRITE_BATCH_MAX, through repository.apply_updates), and two cheaper ways to store
    the same outcomes: one merged row per target, and a Core executemany instead of the ORM's
    bulk UPDATE by primary key. Each is run WRITE_COST_RUNS times on a fresh copy of the registry
    and the least CPU is kept (the run least disturbed by the rest of the machine). Every run ends
    with all targets ``done`` (checked)."""
    from sqlalchemy import Table, and_, bindparam, update

    from fleet_service.auth.models import Role
    from fleet_service.commands import repository
    from fleet_service.commands import service as commands
    from fleet_service.commands.delivery import WRITE_BATCH_MAX
    from fleet_service.commands.models import CommandTarget
    from fleet_service.commands.schemas import CommandCreate, Target
    from fleet_service.db import make_engine, make_sessionmaker, session_scope, utcnow
    from fleet_service.protocol.messages import CommandOp

    table: Table = CommandTarget.__table__  # type: ignore[assignment]

    def core_update(session: Any, rows: list[dict[str, Any]]) -> None:
        values = [k for k in rows[0] if k not in ("command_id", "receiver_id")]
        statement = update(table).where(and_(table.c.command_id == bindparam("k_command"),
                                             table.c.receiver_id == bindparam("k_receiver")))
        session.connection().execute(statement.values({k: bindparam(k) for k in values}),
                                     [{**r, "k_command": r["command_id"], "k_receiver": r["receiver_id"]} for r in rows])

    out: dict[str, float] = {}
    variants = [("the outcome writes as now: a sent row and a done row per target, ORM bulk UPDATE", "orm", False),
                ("one merged row per target (sent and done together), ORM bulk UPDATE", "orm", True),
                ("a sent row and a done row per target, Core executemany", "core", False),
                ("one merged row per target, Core executemany", "core", True)]
    for i, (label, way, merged) in enumerate(variants * WRITE_COST_RUNS):
        db = workdir / f"writes-{i}.db"
        copy_registry(registry_db, db)
        engine = make_engine(f"sqlite:///{db}")
        sessions = make_sessionmaker(engine)
        try:
            started = time.process_time()
            with session_scope(sessions) as session:
                created = commands.create_command(session, CommandCreate(target=Target(fleet=True), op=CommandOp.PLAY,
                                                                         url=STREAM_URL),
                                                  commands.Issuer(None, "bench", Role.ADMIN, None))
            request = f"the request: fleet resolved, command and {n:,} target rows inserted, committed"
            out[request] = min(out.get(request, math.inf), time.process_time() - started)
            cid, now = created.command.id, utcnow()
            sent = {"deliveries": 1, "status": "sent", "first_sent_at": now}
            done = {"status": "done", "reason": None, "finished_at": now}
            passes = [{**sent, **done}] if merged else [sent, done]
            started = time.process_time()
            for values in passes:
                rows = [{"command_id": cid, "receiver_id": rid, **values} for rid in created.receiver_ids]
                for at in range(0, len(rows), WRITE_BATCH_MAX):
                    with session_scope(sessions) as session:
                        (repository.apply_updates if way == "orm" else core_update)(session, rows[at:at + WRITE_BATCH_MAX])
            out[label] = min(out.get(label, math.inf), time.process_time() - started)
            with session_scope(sessions) as session:
                if repository.status_counts(session, [cid])[cid] != {"done": len(created.receiver_ids)}:
                    raise RuntimeError(f"write variant {label!r} did not store every outcome")
        finally:
            engine.dispose()
            db.unlink()
    return out


# --- report ---------------------------------------------------------------------------------

def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} s"


def _cores(c: dict[str, float], own: str) -> str:
    if not c:
        return "—"
    return (f"broker {c.get('broker', 0):.2f} / {own} {c.get(own, 0):.2f} / responders {c.get('responders', 0):.2f}"
            f" / other {c.get('other', 0):.2f}")


def table(phases: list[Phase]) -> str:
    """One row per phase; a service row gives its ratio to each raw phase of its round, in order."""
    rows = ["| round | path | 50 % | 99 % | 100 % | in the database | cores to 100 %: broker / publisher / responders / other | broker drops |",
            "|---|---|---:|---:|---:|---:|---|---:|"]
    for p in phases:
        cells = [_s(p.at[s]) for s in SHARES]
        if p.kind == SERVICE:
            raws = [r for r in phases if r.kind == RAW and r.round == p.round]
            for i, share in enumerate(SHARES):
                mine = p.at[share]
                ratios = [f"{mine / theirs:.2f}×" for r in raws if (theirs := r.at[share]) and mine]
                if ratios:
                    cells[i] += f" ({' / '.join(ratios)})"
        db = _s(p.facts["db_s"]) if p.kind == SERVICE else "—"
        rows.append(f"| {p.round} | {p.label} | {' | '.join(cells)} | {db} | "
                    f"{_cores(p.cpu, 'service' if p.kind == SERVICE else 'client')} | {p.broker_dropped:.0f} |")
    return "\n".join(rows)


def findings(phases: list[Phase], n: int, responders: dict[str, int]) -> list[str]:
    out: list[str] = []
    for p in phases:
        f = p.facts
        if p.kind == RAW:
            out.append(f"- round {p.round}, {p.label}: {f['receivers']:,} of {n:,} receivers acknowledged ({f['received']:,} "
                       f"acks, {f['bad']} not a valid `done` for this command); the {n:,} publishes were handed to "
                       f"paho in {f['handed_s']:.2f} s; first ack after {_s(f['first_ack_s'])}; the client's CPU to 100 %: {f['cpu_s']:.2f} s "
                       f"({1e6 * f['cpu_s'] / n:.0f} µs per receiver)")
            continue
        p99, verdict = p.at[0.99], ""
        for raw in (r for r in phases if r.kind == RAW and r.round == p.round):
            r99 = raw.at[0.99]
            if p99 is not None and r99:
                meets = p99 < GOAL_99_S and p99 <= GOAL_RATIO * r99
                verdict += (f"; 99 % in {p99:.2f} s = {p99 / r99:.2f}× {raw.label}: **{'meets' if meets else 'misses'}** "
                            f"the goal (< {GOAL_99_S:g} s and ≤ {GOAL_RATIO:g}× raw)")
        stored = ", ".join(f"{k} {v:,}" for k, v in sorted(f["stored"].items()))
        d = f["delivery"]
        out.append(
            f"- round {p.round}, service: {f['targets']:,} targets; the request (fleet resolved, command and "
            f"{f['targets']:,} target rows inserted, committed) took {f['created_s']:.2f} s; all published after "
            f"{_s(f['all_sent_s'])}; first ack seen after {_s(f['first_ack_s'])}; acknowledged per `progress()`: 50 % {_s(p.at[0.5])}, 99 % {_s(p.at[0.99])}, "
            f"100 % {_s(p.at[1.0])}; outcomes in the database after {f['db_s']:.2f} s (stored: {stored}){verdict}; "
            f"delivery counters: published {d['published']:,}, publish failed {d['publish_failed']}, acks "
            f"{d['acks']:,}, unknown {d['acks_unknown']}, late {d['acks_late']}, write failures {d['write_failures']}; "
            f"all {n:,} receivers seen online {f['online_after_s']:.1f} s after the service started (at rest after "
            f"{f.get('settled_after_s', 0):.1f} s: ledger, live state and schedule checks done); cores from the "
            f"request to the database: {_cores(p.cpu_db, 'service')}; the service's CPU to 100 %: {f['cpu_s']:.2f} s "
            f"({1e6 * f['cpu_s'] / n:.0f} µs per target), to the database {f['cpu_db_s']:.2f} s")
    out.append("- responders at the end: " + ", ".join(f"{k} {v:,}" for k, v in sorted(responders.items())))
    return out


def conditions(cfg: argparse.Namespace, info: dict[str, str], n: int, registry_s: float, hashing_s: float,
               ready: list[dict[str, Any]], broker_nofile: str) -> str:
    connected = sum(r["connected"] for r in ready)
    what_if = cfg.what_if_values
    return "\n".join([
        machine_line(info),
        f"- receivers: {n:,} registered and provisioned in a SQLite registry through the registry service "
        f"({registry_s:.0f} s); {connected:,} responders connected in {len(ready)} process(es) "
        f"(`simulators.mqtt.MqttClient`, {max(r['seconds'] for r in ready):.1f} s to connect), each logged in as "
        f"its receiver with a Will, a retained birth (QoS 1) and a subscription to its own cmd at QoS 1; every "
        f"command decoded with `decode_command` and answered at once with `done` on its ack topic (QoS 1)",
        f"- broker: one private Mosquitto for the whole run on 127.0.0.1, password file ({n + 2:,} logins hashed in "
        f"{hashing_s:.1f} s) and acl_file (`pattern readwrite loa/v1/rx/%u/#`; `loa-service` reads and writes "
        f"`loa/v1/rx/#`), the Tuning section of broker/mosquitto/mosquitto.conf, persistence off, open files "
        f"{broker_nofile}",
        f"- raw: one paho client (own network thread, logged in as `loa-service`), run with QoS 1 in-flight window "
        f"{' and with '.join(_window(w) for w in cfg.raw_inflight)} (the service's is "
        f"{_window(_source_value('fleet_service.mqtt.adapter.MAX_INFLIGHT'))}), publishes the play command to each cmd topic at QoS 1 and counts acks on "
        "`loa/v1/rx/+/ack`; times from its first publish to the k-th distinct receiver's ack",
        "- service: in its own process, the service's lifespan without HTTP (`run_telemetry` + `run_mqtt_side`, "
        "LOA_BROKER=external, SQLite, a fresh copy of the registry per round); once it sees every receiver online "
        "(retained births) and the ledger is written, one `play` to the whole fleet by "
        "`commands.service.create_command` (committed in a worker thread, as `POST /api/v1/commands` does) + "
        "`runtime.commands.submit`; times from the request to `CommandDelivery.progress()` counting the share "
        f"acknowledged (polled every {PROGRESS_POLL_S * 1000:.0f} ms, so ±10 ms) and to `CommandDelivery.flush()`; "
        + (f"**what-if**: in the service process {', '.join(f'`{k}` = {v!r} (source: {_source_value(k)!r})' for k, v in what_if.items())}"
           if what_if else "the service's source as it is"),
        f"- {cfg.repeat} round(s), each the raw phases then the service; before each phase up to {cfg.settle:g} s of waiting for "
        "the machine to go idle; cores = CPU seconds / wall time over the phase's window, 'other' the rest of the "
        "machine (other work on a shared host)",
    ])


def _window(inflight: int) -> str:
    return "none" if inflight == 0 else f"{inflight:,}"


def _source_value(name: str) -> Any:
    module, _, constant = name.rpartition(".")
    return getattr(importlib.import_module(module), constant)


def parse_what_if(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """MODULE.CONSTANT=JSON pairs, checked against the source: the constant must exist in a
    fleet_service module and the new value must have the same type."""
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value = json.loads(text)
            current = _source_value(name) if sep and name.startswith("fleet_service.") else None
        except (ValueError, ImportError, AttributeError) as exc:
            parser.error(f"--what-if {item!r}: {exc}")
        if current is None or not isinstance(value, type(current)) and not (
                isinstance(current, float) and isinstance(value, int)):
            parser.error(f"--what-if {item!r}: give fleet_service.<module>.<CONSTANT>=<value of the same type>")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.command_acks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--receivers", type=int, default=2000, help="receivers (default 2000; the goal is 10000)")
    parser.add_argument("--responder-processes", type=int, default=2, help="processes of responders (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of raw then service (default 1)")
    parser.add_argument("--raw-inflight", default=f"{RAW_INFLIGHT},0",
                        help="the raw client's QoS 1 in-flight windows, one raw phase each, 0 = none (default "
                             f"{RAW_INFLIGHT},0: the service's window, and none)")
    parser.add_argument("--what-if", metavar="MODULE.CONSTANT=VALUE", action="append", default=[],
                        help="run the service with a tuning constant replaced, e.g. "
                             "fleet_service.mqtt.adapter.MAX_INFLIGHT=0 (VALUE is JSON; repeatable)")
    parser.add_argument("--py-spy", metavar="FILE", dest="py_spy",
                        help="one more service phase (not counted) sampled by py-spy (PATH or $PY_SPY); collapsed "
                             "stacks to FILE")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time, in-process, the database side of one fleet-wide command: the request's "
                             "INSERT and the outcome UPDATEs as the writer does them, and cheaper alternatives")
    add_run_options(parser, settle=20.0)
    cfg = parser.parse_args(argv)
    n = cfg.receivers
    if n < 1 or not 1 <= cfg.responder_processes <= n or cfg.repeat < 1:
        parser.error("need receivers ≥ 1, 1 ≤ responder processes ≤ receivers, repeat ≥ 1")
    what_if = cfg.what_if_values = parse_what_if(parser, cfg.what_if)
    try:
        cfg.raw_inflight = [int(w) for w in cfg.raw_inflight.split(",") if w.strip()]
    except ValueError:
        parser.error("--raw-inflight: give whole numbers separated by commas")
    if any(w < 0 for w in cfg.raw_inflight):
        parser.error("--raw-inflight: windows are ≥ 0")
    command = command_line("bench.command_acks", argv, py_spy=bool(cfg.py_spy))
    info = machine()
    print(f"# {command}\n", flush=True)
    limit = raise_nofile()
    if n // cfg.responder_processes + 100 > limit or n + 100 > limit:
        parser.error(f"open-file limit {limit} is too low for {n} receivers")

    phases: list[Phase] = []
    ctx = mp.get_context("spawn")
    tmp = tempfile.mkdtemp(prefix="loa-bench-acks-", dir=cfg.keep)
    broker: Broker | None = None
    observer: SysObserver | None = None
    responders: list[Any] = []
    stop = ctx.Event()
    events = ctx.Queue()
    totals: Counter[str] = Counter()
    writes: dict[str, float] = {}
    spied: Phase | None = None
    try:
        workdir = Path(tmp)
        registry = make_registry(workdir, n)
        print(f"registry: {n} receivers provisioned in {registry.seconds:.1f} s", flush=True)
        # The service publishes commands: its login reads and writes the receivers' topics.
        auth = write_broker_files(workdir / "auth", registry.credentials, service_writes=True)
        password, hashing = auth.service_password, auth.hashing_s
        broker = start_broker(workdir / "broker", auth, production_tuning())
        observer = SysObserver(broker.port, auth.observer_password)
        files = split_credentials(workdir, registry.credentials, cfg.responder_processes)
        params = {"port": broker.port, "credentials": files}
        responders = [ctx.Process(target=_responders_main, args=(i, params, events, stop), daemon=True,
                                  name=f"responders-{i}") for i in range(cfg.responder_processes)]
        for p in responders:
            p.start()
        ready = [expect(events, "responders-ready", watch=responders)[2] for _ in responders]
        connected = sum(r["connected"] for r in ready)
        print(f"responders: {connected} of {n} connected in {max(r['seconds'] for r in ready):.1f} s "
              f"(errors: {[r['errors'] for r in ready]})", flush=True)
        if connected < n:
            raise RuntimeError(f"only {connected} of {n} responders connected")
        setup = Setup(n, broker.port, broker, observer, password, registry.path, workdir, [p.pid for p in responders],
                      cfg.raw_inflight, what_if)
        for number in range(1, cfg.repeat + 1):
            for inflight in [*cfg.raw_inflight, None]:
                wait_idle(cfg.settle, f"round {number}")
                phase = run_raw(setup, number, inflight) if inflight is not None else run_service(setup, number)
                kind = phase.kind
                phases.append(phase)
                print(f"[{phase.label} {number}] 50 % {_s(phase.at[0.5])}, 99 % {_s(phase.at[0.99])}, 100 % "
                      f"{_s(phase.at[1.0])}" + (f", in the database {_s(phase.facts['db_s'])}" if kind == SERVICE else "")
                      + f"; cores {phase.cpu and {k: round(v, 2) for k, v in phase.cpu.items()}}", flush=True)
        if cfg.py_spy:
            wait_idle(cfg.settle, "the sampled phase")
            spied = run_service(setup, cfg.repeat + 1, str(Path(cfg.py_spy).resolve()))
            print(f"[service sampled by py-spy, not counted] 99 % {_s(spied.at[0.99])}, in the database "
                  f"{_s(spied.facts['db_s'])}", flush=True)
        if cfg.breakdown:
            writes = write_costs(workdir, registry.path, n)
            for label, seconds in writes.items():
                print(f"in-process: {label}: {seconds:.3f} s CPU", flush=True)
        broker_nofile = open_files_limit(broker.pid)
        stop.set()
        for _ in responders:
            event = expect(events, "responders-done", watch=responders)
            totals.update(event[2])
    finally:
        stop.set()
        join_all(responders)
        if observer is not None:
            observer.close()
        if broker is not None:
            broker.stop()
        if cfg.keep:
            print(f"work directory kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    sampled = spy_summary(cfg.py_spy) if cfg.py_spy and Path(cfg.py_spy).exists() else None
    writes_lines = ([f"The database side alone (in-process, SQLite, {n:,} targets, CPU seconds of one thread, least of "
                     f"{WRITE_COST_RUNS} runs; `--breakdown`):", "",
                     *[f"- {label}: {seconds:.3f} s" for label, seconds in writes.items()]] if writes else [])
    spy_lines = (["Where the service process's time went in one more service phase (py-spy, not in the table; "
                  f"99 % after {_s(spied.at[0.99])} under sampling):", "", "```", sampled, "```"]
                 if sampled and spied is not None else [])
    results_section(f"a play command to {n:,} receivers, time until acknowledged", "command_acks.py", command,
                    conditions(cfg, info, n, registry.seconds, hashing, ready, broker_nofile),
                    findings(phases, n, dict(totals)), table(phases), writes_lines, spy_lines, append=cfg.append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
