"""Ingest rate of the fleet service against raw Mosquitto delivery, in the same run.

Two consumers see the same load from the same publisher processes, each against a fresh
private Mosquitto:

- **raw**: a plain paho subscriber on ``loa/v1/rx/#`` that only counts: what Mosquitto delivers
  to a minimal Python client under this load, the reference;
- **service**: the service's real path in its own process: ``MqttAdapter`` (paho on the service's event loop) feeding
  ``IngestService`` (decode, registry check, connectivity tracker, live telemetry) with the
  ledger writer committing transitions to SQLite.

Runs alternate raw, service, raw, service, ... so that drift in the machine's load hits both.
The rate of a run is messages counted by the consumer divided by the time from its first to its
last message. Publishers run flat out: when the consumer is slower, Mosquitto drops the QoS 0
overflow (its ``max_queued_messages``), which is reported as lost; the rate is then the
consumer's saturated rate.

    python -m bench.ingest_rate --messages 300000 --receivers 1000 --publishers 2 --repeat 3

``--breakdown`` adds runs that split the service's cost (aiomqtt alone, decode alone, ingest
without MQTT); ``--profile FILE`` adds one cProfile'd service run (not counted). See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import (
    CpuSampler,
    add_run_options,
    attach_py_spy,
    command_line,
    copy_registry,
    expect,
    join_all,
    machine,
    machine_line,
    make_registry,
    receiver_ids,
    report_failure,
    results_section,
    start_broker,
    thread_stat,
    wait_idle,
    wait_py_spy,
)

# --- tuning ---------------------------------------------------------------------------------

# The workload is the same in every run and every phase: one seed.
SEED = 20261126
FIRMWARE = "1.4.2"
# A reconnect birth says the receiver was this long without the broker: the tracker records the
# unobserved outage, so each such birth costs the ledger two transitions.
OUTAGE_S = 5.0
# Publishers run without a network thread (one thread, no GIL hand-offs): every this many
# publishes they read PUBACKs and answer pings.
PUBLISHER_SERVICE_EVERY = 1024
# QoS 1 births in flight per publisher; beyond it paho queues them in the publisher.
PUBLISHER_MAX_INFLIGHT = 1000
# After the publishers are done, a consumer that has heard nothing for this long is done.
QUIET_S = 1.0
# Upper bound on any one wait (start-up, a run, a drain).
START_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 600.0
# CPU accounting samples /proc this often; window ends are interpolated between samples.
SAMPLE_INTERVAL_S = 0.05
# The aiomqtt adapter's bound on its queue of incoming messages (--breakdown's aiomqtt run).
AIOMQTT_MAX_QUEUED_INCOMING = 100_000
# Messages timed by the in-process part of --breakdown (decode alone, ingest without MQTT).
MICROBENCH_MAX = 100_000

RAW, SERVICE, AIOMQTT = "raw", "service", "aiomqtt"

Work = list[tuple[str, bytes, int, bool]]


# --- the load -------------------------------------------------------------------------------

def publisher_share(messages: int, publishers: int, index: int) -> int:
    return messages // publishers + (1 if index < messages % publishers else 0)


def build_workload(index: int, publishers: int, receivers: int, messages: int, birth_share: float,
                   base_ts: int) -> Work:
    """Publisher ``index``'s messages, pre-encoded: a boot birth for each of its receivers, then
    telemetry round-robin over them with a share of reconnect births (new session) mixed in.
    Deterministic: the same arguments give the same bytes. ``base_ts``: the receivers' clock
    (Unix seconds) at the first report."""
    from fleet_service.protocol.messages import AmpState, State, StateMessage, StateReason, StreamState, Telemetry
    from fleet_service.protocol.topics import MessageKind, receiver_topics

    own = [rid for i, rid in enumerate(receiver_ids(receivers)) if i % publishers == index]
    count = publisher_share(messages, publishers, index)
    if not own:
        return []
    rng = random.Random(SEED * 1000 + index)
    topics = {rid: receiver_topics(rid) for rid in own}
    session = dict.fromkeys(own, 1)
    seq = dict.fromkeys(own, 0)
    work: Work = []
    for j in range(count):
        rid = own[j % len(own)]
        rnd = j // len(own)
        if j < len(own):
            birth = StateMessage(state=State.ONLINE, session=1, reason=StateReason.BOOT, firmware=FIRMWARE)
            work.append((topics[rid][MessageKind.STATE], _encode(birth), 1, True))
        elif rng.random() < birth_share:
            session[rid] += 1
            seq[rid] = 0
            birth = StateMessage(state=State.ONLINE, session=session[rid], reason=StateReason.RECONNECT,
                                 firmware=FIRMWARE, offline_s=OUTAGE_S)
            work.append((topics[rid][MessageKind.STATE], _encode(birth), 1, True))
        else:
            seq[rid] += 1
            report = Telemetry(
                session=session[rid], seq=seq[rid], sent_at=base_ts + rnd, uptime_s=3600 + rnd,
                signal_dbm=-60 - (j % 40), signal_csq=(j % 31), temperature_c=35.0 + (j % 100) / 10,
                supply_v=12.0 + (j % 10) / 10, amplifier=AmpState.ON, stream=StreamState.PLAYING,
                bitrate_kbps=64, underruns=rnd % 5, free_memory=80_000 + (j % 5000), firmware=FIRMWARE,
            )
            work.append((topics[rid][MessageKind.TELEMETRY], _encode(report), 0, False))
    return work


def _encode(message: Any) -> bytes:
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


# --- publisher process ----------------------------------------------------------------------

def _publisher_main(index: int, params: dict[str, Any], events: Any, go: Any) -> None:
    import paho.mqtt.client as mqtt

    work = build_workload(index, params["publishers"], params["receivers"], params["messages"],
                          params["birth_share"], params["base_ts"])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.max_inflight_messages_set(PUBLISHER_MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    connected: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: connected.append(reason)
    client.connect(params["host"], params["port"], keepalive=60)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not connected and time.monotonic() < deadline:
        client.loop(0.05)
    if not connected or connected[0].is_failure:
        events.put(("error", f"publisher {index}: not connected ({connected})"))
        return
    events.put(("publisher-ready", index, len(work)))
    if not go.wait(START_TIMEOUT_S):
        events.put(("error", f"publisher {index}: never told to start"))
        return

    publish = client.publish
    loop = client.loop
    acks: list[Any] = []
    started = time.monotonic()
    for n, (topic, payload, qos, retain) in enumerate(work):
        info = publish(topic, payload, qos, retain)
        if qos:
            acks.append(info)
        if n % PUBLISHER_SERVICE_EVERY == 0:
            loop(0)
    # Done when every byte is on the socket and every QoS 1 birth is acknowledged.
    deadline = time.monotonic() + START_TIMEOUT_S
    unacked = len(acks)
    while time.monotonic() < deadline:
        unacked = sum(1 for info in acks if not info.is_published())
        if not unacked and not client.want_write():
            break
        loop(0.01)
    finished = time.monotonic()
    events.put(("published", index, {"count": len(work), "start": started, "end": finished, "unacked": unacked,
                                     "births": len(acks), "bytes": sum(len(w[1]) for w in work)}))
    client.disconnect()
    loop(0.1)


# --- consumers ------------------------------------------------------------------------------

def _consumer_main(kind: str, params: dict[str, Any], events: Any, done: Any) -> None:
    try:
        if kind == RAW:
            result = _raw_subscriber(params, events, done)
        else:
            result = asyncio.run(_async_consumer(kind, params, events, done))
    except BaseException as exc:  # report, never hang the parent
        report_failure(events, f"{kind} consumer", exc)
        return
    events.put(("consumed", kind, result))


def _raw_subscriber(params: dict[str, Any], events: Any, done: Any) -> dict[str, Any]:
    """Mosquitto's delivery to a plain paho client: count and time-stamp, nothing else. The loop
    is paho's own ``loop()``, the one ``loop_forever()`` runs."""
    import paho.mqtt.client as mqtt

    from fleet_service.protocol.topics import TOPIC_ROOT

    count = 0
    births = 0
    first = 0.0
    last = 0.0

    def on_message(_client: Any, _userdata: Any, message: Any) -> None:
        nonlocal count, births, first, last
        last = time.monotonic()
        if not count:
            first = last
        count += 1
        if message.qos:  # the state births are the QoS 1 messages of this load
            births += 1

    subscribed: list[Any] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-raw-subscriber",
                         protocol=mqtt.MQTTv311, clean_session=True)
    client.on_message = on_message
    client.on_subscribe = lambda _c, _u, _mid, codes, _p: subscribed.append(codes)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{TOPIC_ROOT}/#", qos=1)
    client.connect(params["host"], params["port"], keepalive=60)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not subscribed and time.monotonic() < deadline:
        client.loop(0.05)
    if not subscribed:
        raise RuntimeError("raw subscriber: no SUBACK")
    events.put(("consumer-ready",))

    expected = params["messages"]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    done_seen = 0.0
    next_check = 0.0
    loop = client.loop
    monotonic = time.monotonic
    while True:
        loop(0.05)
        if count >= expected:
            break
        now = monotonic()
        if now >= next_check:
            next_check = now + 0.05
            if now > deadline:
                break
            if not done_seen and done.is_set():
                done_seen = now
            if done_seen and now - max(last, done_seen) > QUIET_S:
                break
    client.disconnect()
    return {"received": count, "accepted": count, "first": first, "last": last, "births_received": births}


async def _async_consumer(kind: str, params: dict[str, Any], events: Any, done: Any) -> dict[str, Any]:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if kind == AIOMQTT:
        return await _aiomqtt_only(params, events, done)
    return await _service(params, events, done)


async def _wait_quiet(done: Any, received: Callable[[], int], expected: int) -> None:
    """Return once everything expected arrived, or the publishers are done and nothing came for
    QUIET_S, or the run timed out."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    seen = received()
    changed = time.monotonic()
    done_seen = 0.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        current = received()
        if current != seen:
            seen, changed = current, now
        if current >= expected:
            return
        if not done_seen and done.is_set():
            done_seen = now
        if done_seen and now - max(changed, done_seen) > QUIET_S:
            return


async def _aiomqtt_only(params: dict[str, Any], events: Any, done: Any) -> dict[str, Any]:
    """The first adapter's MQTT side alone (aiomqtt, before commit 05d65ea moved the adapter to paho
    on the event loop): its client options and subscriptions, ``async for`` over
    ``client.messages`` and the same payload conversion, but no ingest."""
    import aiomqtt

    from fleet_service.protocol import service_subscriptions

    state = {"count": 0, "first": 0.0, "last": 0.0, "births": 0}
    ready = asyncio.Event()

    async def consume() -> None:
        async with aiomqtt.Client(params["host"], params["port"], identifier="bench-aiomqtt-only", keepalive=30,
                                  clean_session=True, max_queued_incoming_messages=AIOMQTT_MAX_QUEUED_INCOMING) as client:
            for topic, qos in service_subscriptions():
                await client.subscribe(topic, qos=qos)
            ready.set()
            async for message in client.messages:
                payload = message.payload
                if not isinstance(payload, bytes | bytearray):
                    payload = str(payload).encode()
                _ = (str(message.topic), bytes(payload), bool(message.retain))
                now = time.monotonic()
                if not state["count"]:
                    state["first"] = now
                state["last"] = now
                state["count"] += 1
                if message.qos:
                    state["births"] += 1

    task = asyncio.create_task(consume())
    await asyncio.wait_for(ready.wait(), START_TIMEOUT_S)
    events.put(("consumer-ready",))
    await _wait_quiet(done, lambda: int(state["count"]), params["messages"])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return {"received": state["count"], "accepted": state["count"], "first": state["first"], "last": state["last"],
            "births_received": state["births"]}


def _timed_ingest_class() -> type:
    from fleet_service.ingest.service import IngestService

    class TimedIngest(IngestService):
        """IngestService plus the time of its first and last accepted message (one clock read
        per message, the same the raw subscriber pays)."""

        first_accepted = 0.0
        last_accepted = 0.0
        births_received = 0

        def handle(self, topic: str, payload: bytes, *, retained: bool = False, at: Any = None) -> None:
            before = self.counters.accepted
            super().handle(topic, payload, retained=retained, at=at)
            if self.counters.accepted != before:
                now = time.monotonic()
                if not before:
                    self.first_accepted = now
                self.last_accepted = now
            if topic.endswith("/state"):
                self.births_received += 1

    return TimedIngest


async def _service(params: dict[str, Any], events: Any, done: Any) -> dict[str, Any]:
    """The service's MQTT side as fleet_service/worker/composition.py builds it for Mosquitto, minus
    the dynamic-security accounts (they create logins; ingest does not use them)."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from fleet_service.config import Settings
    from fleet_service.db import session_scope
    from fleet_service.ingest.events import EventBus
    from fleet_service.mqtt.adapter import MqttAdapter
    from fleet_service.runtime import Runtime
    from fleet_service.uptime.models import ConnectivityInterval

    settings = Settings(broker="mosquitto", mqtt_host=params["host"], mqtt_port=params["port"],
                        database_url=params["database_url"], mqtt_password="bench-anonymous-broker")
    runtime = Runtime.from_settings(settings)
    ingest = _timed_ingest_class()(
        runtime.sessions, EventBus(),
        inactivity_timeout=timedelta(seconds=settings.inactivity_timeout_s),
        grace=timedelta(seconds=settings.startup_grace_s),
        max_payload_bytes=settings.max_payload_bytes,
    )
    profiler = None
    try:
        await ingest.start()
        adapter = MqttAdapter(settings, ingest, client_id="bench-loa-service")
        task = asyncio.create_task(adapter.run(), name="mqtt-adapter")
        await asyncio.wait_for(adapter.connected.wait(), START_TIMEOUT_S)
        if params.get("profile"):
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        events.put(("consumer-ready",))
        await _wait_quiet(done, lambda: ingest.counters.received, params["messages"])
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(params["profile"])
        backlog_at_end = ingest.ledger_backlog
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        flush_started = time.monotonic()
        await ingest.stop()
        flush_s = time.monotonic() - flush_started
        with session_scope(runtime.sessions) as session:
            rows = session.scalar(select(func.count()).select_from(ConnectivityInterval))
    finally:
        runtime.close()
    c = ingest.counters
    return {
        "received": c.received, "accepted": c.accepted, "first": ingest.first_accepted,
        "last": ingest.last_accepted, "dropped": dict(c.dropped), "transitions": c.transitions,
        "ledger_written": c.ledger_written, "ledger_failures": c.ledger_failures,
        "ledger_dropped": c.ledger_dropped, "ledger_rows": rows, "ledger_backlog_at_end": backlog_at_end,
        "flush_s": flush_s, "stale": ingest.tracker.stale_messages, "live_telemetry": len(ingest.telemetry),
        "births_received": ingest.births_received,
    }


# --- one run --------------------------------------------------------------------------------

@dataclass
class RunResult:
    kind: str
    run: int
    published: int
    publish_rate: float
    received: int
    accepted: int
    rate: float
    window_s: float
    lost: int
    births: int
    payload_bytes: int
    unacked_births: int
    cpu: dict[str, float]
    extra: dict[str, Any] = field(default_factory=dict)


def run_once(kind: str, number: int, cfg: argparse.Namespace, workdir: Path, template_db: Path,
             profile: str | None = None, on_consumer: Callable[[int], Any] | None = None) -> RunResult:
    """One run of one consumer ``kind`` against a fresh broker. ``on_consumer`` is called with the
    consumer's pid once it is subscribed, before the publishers start (e.g. to attach a
    sampling profiler)."""
    ctx = mp.get_context("spawn")
    tuning = [f"max_queued_messages {cfg.max_queued}"] if cfg.max_queued is not None else []
    with start_broker(workdir / f"broker-{kind}-{number}", None, tuning, sys_interval=0) as broker:
        params: dict[str, Any] = {
            "host": broker.host, "port": broker.port, "messages": cfg.messages, "receivers": cfg.receivers,
            "publishers": cfg.publishers, "birth_share": cfg.birth_share, "profile": profile,
            "base_ts": cfg.base_ts,
        }
        if kind == SERVICE:
            params["database_url"] = copy_registry(template_db, workdir / f"ledger-{kind}-{number}.db")
        events = ctx.Queue()
        go, done = ctx.Event(), ctx.Event()
        processes: list[Any] = []
        finished = False
        try:
            consumer = ctx.Process(target=_consumer_main, args=(kind, params, events, done), daemon=True)
            consumer.start()
            processes.append(consumer)
            expect(events, "consumer-ready", watch=processes)
            if on_consumer is not None:
                on_consumer(consumer.pid)
            publishers = [ctx.Process(target=_publisher_main, args=(i, params, events, go), daemon=True)
                          for i in range(cfg.publishers)]
            for p in publishers:
                p.start()
                processes.append(p)
            for _ in publishers:
                expect(events, "publisher-ready", watch=processes)
            sampler = CpuSampler({"broker": [broker.pid], "publishers": [p.pid for p in publishers],
                                  "consumer": [consumer.pid], "consumer_main": [thread_stat(consumer.pid)]},
                                 interval_s=SAMPLE_INTERVAL_S, deadline_s=RUN_TIMEOUT_S + 2 * START_TIMEOUT_S,
                                 parts=["consumer_main"])
            sampler.start()
            time.sleep(4 * SAMPLE_INTERVAL_S)
            go_at = time.monotonic()
            go.set()
            published = [expect(events, "published", RUN_TIMEOUT_S, processes)[2] for _ in publishers]
            done.set()
            consumed = expect(events, "consumed", RUN_TIMEOUT_S + 2 * QUIET_S, processes)[2]
            consumed_at = time.monotonic()
            sampler.stop()
            finished = True
        finally:
            for p in processes:
                if not finished and p.is_alive():
                    p.terminate()
            join_all(processes, 10)
    total = sum(p["count"] for p in published)
    pub_start = min(p["start"] for p in published)
    pub_end = max(p["end"] for p in published)
    window = consumed["last"] - consumed["first"]
    rate = consumed["accepted"] / window if window > 0 else 0.0
    cpu = sampler.cores(go_at, max(pub_end, consumed["last"]))
    # The consumer's CPU per message: less sensitive to what else runs than the rate is.
    consumer_s = sampler.seconds("consumer", go_at, consumed["last"])
    # Split: the thread that runs the MQTT client and ingest vs the others (the ledger writer's).
    main_s = sampler.seconds("consumer_main", go_at, consumed["last"])
    extra = {k: v for k, v in consumed.items() if k not in ("received", "accepted", "first", "last")}
    received = consumed["received"] or 1
    extra["cpu_us_per_msg"] = 1e6 * consumer_s / received
    extra["main_thread_us_per_msg"] = 1e6 * main_s / received
    # Other threads until the consumer was done (the ledger's backlog flushed).
    extra["other_threads_cpu_s"] = (sampler.seconds("consumer", go_at, consumed_at)
                                    - sampler.seconds("consumer_main", go_at, consumed_at))
    return RunResult(kind, number, total, total / (pub_end - pub_start) if pub_end > pub_start else 0.0,
                     consumed["received"], consumed["accepted"], rate, window, total - consumed["received"],
                     sum(p["births"] for p in published), sum(p["bytes"] for p in published),
                     sum(p["unacked"] for p in published), cpu, extra)


# --- the in-process part of --breakdown -----------------------------------------------------

def _microbench_main(params: dict[str, Any], events: Any) -> None:
    try:
        events.put(("microbench", asyncio.run(_microbench(params))))
    except BaseException as exc:
        report_failure(events, "microbench", exc)


async def _microbench(params: dict[str, Any]) -> dict[str, Any]:
    """Per-message cost without any MQTT: decode() alone; IngestService.handle() over the same
    messages (tracker, live state; its ledger writer runs in its thread meanwhile); and the ledger
    alone, record_transitions() in batches the way the writer calls it."""
    from datetime import timedelta

    from fleet_service.db import make_engine, make_sessionmaker, session_scope, utcnow
    from fleet_service.ingest.repository import IngestRepository
    from fleet_service.ingest.events import EventBus
    from fleet_service.ingest.service import LEDGER_BATCH_MAX, IngestService
    from fleet_service.protocol import decode
    from fleet_service.uptime.models import Connectivity, TransitionCause
    from fleet_service.uptime.service import record_transitions
    from fleet_service.uptime.tracker import Transition

    work: Work = []
    for i in range(params["publishers"]):
        work += build_workload(i, params["publishers"], params["receivers"],
                               min(params["messages"], MICROBENCH_MAX), params["birth_share"], params["base_ts"])
    engine = make_engine(params["database_url"])
    sessions = make_sessionmaker(engine)
    try:
        t0 = time.perf_counter()
        for topic, payload, _qos, _retain in work:
            decode(topic, payload, max_bytes=4096)
        decode_s = time.perf_counter() - t0

        ingest = IngestService(sessions, EventBus(), inactivity_timeout=timedelta(seconds=200), grace=timedelta(seconds=30),
                               max_payload_bytes=4096)
        await ingest.start()
        t0 = time.perf_counter()
        for topic, payload, _qos, _retain in work:
            ingest.handle(topic, payload)
        await ingest.lookup_done()
        handle_s = time.perf_counter() - t0
        await ingest.stop()

        rids = receiver_ids(params["receivers"])
        base = utcnow() + timedelta(days=1)
        transitions = [
            Transition(rids[i % len(rids)], Connectivity.OFFLINE if (i // len(rids)) % 2 == 0 else Connectivity.ONLINE,
                       base + timedelta(milliseconds=i), TransitionCause.BIRTH, 2)
            for i in range(min(5000, 5 * len(rids)))
        ]
        with session_scope(sessions) as session:
            station_of = IngestRepository(session).active_receivers()
        t0 = time.perf_counter()
        for start in range(0, len(transitions), LEDGER_BATCH_MAX):
            with session_scope(sessions) as session:
                record_transitions(session, transitions[start:start + LEDGER_BATCH_MAX], station_of)
        ledger_s = time.perf_counter() - t0
    finally:
        engine.dispose()
    n = len(work)
    return {"messages": n, "decode_us": 1e6 * decode_s / n, "handle_us": 1e6 * handle_s / n,
            "accepted": ingest.counters.accepted, "transitions": ingest.counters.transitions,
            "ledger_transitions": len(transitions), "ledger_us": 1e6 * ledger_s / len(transitions)}


def run_microbench(cfg: argparse.Namespace, workdir: Path, template_db: Path) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    params = {"messages": cfg.messages, "receivers": cfg.receivers, "publishers": cfg.publishers,
              "birth_share": cfg.birth_share, "base_ts": cfg.base_ts,
              "database_url": copy_registry(template_db, workdir / "ledger-microbench.db")}
    events = ctx.Queue()
    p = ctx.Process(target=_microbench_main, args=(params, events), daemon=True)
    p.start()
    try:
        return expect(events, "microbench", RUN_TIMEOUT_S, [p])[1]
    finally:
        join_all([p], 10)


# --- report ---------------------------------------------------------------------------------

def _k(x: float) -> str:
    return f"{x / 1000:.1f}k"


def progress_line(r: RunResult) -> str:
    e = r.extra
    line = (f"run {r.run} {r.kind:8s} published {r.published} at {_k(r.publish_rate)}/s; received {r.received} "
            f"(lost {r.lost}; births {e.get('births_received')}/{r.births}); {_k(r.rate)} msg/s over "
            f"{r.window_s:.2f} s; consumer CPU {e.get('cpu_us_per_msg', 0):.1f} µs/msg "
            f"(main thread {e.get('main_thread_us_per_msg', 0):.1f}); cores "
            + " ".join(f"{k} {v:.2f}" for k, v in r.cpu.items()))
    if r.kind == SERVICE:
        line += (f"; ledger {e.get('ledger_written')} written ({e.get('ledger_rows')} rows, "
                 f"{e.get('other_threads_cpu_s', 0):.2f} s CPU in other threads), dropped {e.get('dropped')}, "
                 f"stale {e.get('stale')}")
    return line


def run_table(results: list[RunResult]) -> str:
    head = ("| run | consumer | published | publish msg/s | received | lost | births recv. | msg/s (first→last) "
            "| consumer CPU µs/msg | cores: broker / publishers / consumer / other |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        c = r.cpu
        cores = (f"{c.get('broker', 0):.2f} / {c.get('publishers', 0):.2f} / {c.get('consumer', 0):.2f} / "
                 f"{c.get('other', 0):.2f}")
        lines.append(f"| {r.run} | {r.kind} | {r.published} | {_k(r.publish_rate)} | {r.received} | {r.lost} "
                     f"| {r.extra.get('births_received')}/{r.births} | **{_k(r.rate)}** "
                     f"| {r.extra.get('cpu_us_per_msg', 0):.1f} | {cores} |")
    return "\n".join(lines)


def saturated(r: RunResult) -> bool:
    """Did the consumer fall behind the publishers (so its rate is its own limit)?"""
    return r.lost > 0 or r.rate < 0.9 * r.publish_rate


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summary(results: list[RunResult], cfg: argparse.Namespace) -> tuple[str, float, float, float]:
    raw_runs = [r for r in results if r.kind == RAW]
    service_runs = [r for r in results if r.kind == SERVICE]
    raw = [r.rate for r in raw_runs]
    ours = [r.rate for r in service_runs]
    a, b = _median(raw), _median(ours)
    ratio = b / a if a else 0.0
    verdict = "meets" if ratio >= cfg.goal else "**below**"
    dropped: dict[str, int] = {}
    for r in service_runs:
        for reason, n in r.extra.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    cost_a = _median([r.extra["cpu_us_per_msg"] for r in raw_runs])
    cost_b = _median([r.extra["cpu_us_per_msg"] for r in service_runs])
    main_b = _median([r.extra["main_thread_us_per_msg"] for r in service_runs])
    per_transition = _median([1e3 * r.extra["other_threads_cpu_s"] / r.extra["ledger_written"]
                              for r in service_runs if r.extra.get("ledger_written")])
    other = _median([r.cpu.get("other", 0.0) for r in results])
    raw_bound = [r.run for r in raw_runs if not saturated(r)]
    text = [
        f"- raw Mosquitto → paho subscriber: median **{a:,.0f} msg/s** (runs: {', '.join(f'{x:,.0f}' for x in raw)})",
        f"- service ingest (paho on the event loop → IngestService → ledger): median **{b:,.0f} msg/s** "
        f"(runs: {', '.join(f'{x:,.0f}' for x in ours)})",
        f"- ratio B/A: **{ratio:.2f}×** — {verdict} the goal of ≥ {cfg.goal}×",
        f"- consumer CPU per message (median): raw {cost_a:.1f} µs; service {cost_b:.1f} µs, of which "
        f"{main_b:.1f} µs in the event-loop thread and the rest in the ledger writer's thread "
        f"(≈ {per_transition:.2f} ms CPU per ledger transition)",
        "- service runs: drops by reason: " + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none")
        + "; ledger transitions written: "
        + ", ".join(f"{r.extra.get('ledger_written')} (rows {r.extra.get('ledger_rows')}, "
                    f"backlog at end {r.extra.get('ledger_backlog_at_end')})" for r in service_runs)
        + "; telemetry the tracker counted stale: " + ", ".join(str(r.extra.get("stale")) for r in service_runs),
    ]
    if raw_bound:
        text.append(f"- note: in raw run(s) {raw_bound} the subscriber kept up with the publishers, so the raw "
                    "rate there is the publishing side's limit and the ratio is flattering; use more publishers "
                    "or messages")
    if other > 0.25:
        text.append(f"- note: other work on the machine took a median {other:.2f} cores during the runs; "
                    "rates are lower than on a quiet machine, the CPU per message less so")
    return "\n".join(text), a, b, ratio


def conditions(cfg: argparse.Namespace, info: dict[str, str], births_per_run: int, mean_payload: float) -> str:
    procs_a = f"1 Mosquitto + {cfg.publishers} publisher processes + 1 paho subscriber process"
    procs_b = f"1 Mosquitto + {cfg.publishers} publisher processes + 1 service process (event loop + ledger thread)"
    return "\n".join([
        machine_line(info),
        f"- load: {cfg.messages:,} messages per run from {cfg.publishers} paho publisher processes "
        f"({cfg.receivers:,} receivers, each on its own topic; mean payload {mean_payload:.0f} bytes; telemetry QoS 0, "
        f"{births_per_run:,} state births QoS 1 retained = boot births + {cfg.birth_share:.1%} reconnect births)",
        f"- broker: a private Mosquitto per run on 127.0.0.1, allow_anonymous true (benchmark only; no "
        f"dynamic security), max_queued_messages "
        f"{cfg.max_queued if cfg.max_queued is not None else '1000 (default)'}; the raw subscriber takes "
        "loa/v1/rx/# at QoS 1, the service its own three subscriptions",
        f"- processes on the {info['nproc']} cores: A = {procs_a}; B = {procs_b}; 'other' in the table is "
        "the rest of the machine (other work on a shared host) over the same window",
        f"- {cfg.repeat} runs of each, alternating A, B; rate = messages the consumer counted (B: "
        "ingest.counters.accepted) / time from its first to its last; lost = published − received "
        "(for a consumer that falls behind, Mosquitto drops the QoS 0 overflow and the QoS 1 messages beyond "
        "max_queued_messages)",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000, help="messages per run (default 100000)")
    parser.add_argument("--receivers", type=int, default=1000, help="registered receivers (default 1000)")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each phase (default 3)")
    parser.add_argument("--birth-share", type=float, default=0.01,
                        help="share of messages after the boot births that are reconnect births (default 0.01)")
    parser.add_argument("--max-queued", type=int, default=None,
                        help="Mosquitto max_queued_messages (default: Mosquitto's own, 1000)")
    parser.add_argument("--goal", type=float, default=0.5, help="goal for the ratio B/A (default 0.5)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run: aiomqtt loop alone, decode alone, ingest without MQTT")
    parser.add_argument("--profile", metavar="FILE", help="one more service run under cProfile, stats to FILE")
    parser.add_argument("--py-spy", metavar="FILE", dest="py_spy",
                        help="one more service run sampled by py-spy (on PATH or $PY_SPY), collapsed stacks to FILE")
    add_run_options(parser, settle=30.0, keep=False)
    cfg = parser.parse_args(argv)
    if cfg.messages < 1 or cfg.repeat < 1 or not 1 <= cfg.publishers <= cfg.receivers:
        parser.error("need messages ≥ 1, repeat ≥ 1 and 1 ≤ publishers ≤ receivers")
    if not 0 <= cfg.birth_share < 1:
        parser.error("--birth-share must be in [0, 1)")

    cfg.base_ts = int(time.time())
    command = command_line("bench.ingest_rate", argv, py_spy=bool(cfg.py_spy))
    info = machine()
    print(f"# {command}\n", flush=True)
    results: list[RunResult] = []
    micro: dict[str, Any] | None = None
    sampled: str | None = None
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        template = make_registry(workdir, cfg.receivers).path
        print(f"registry: {cfg.receivers} receivers provisioned in {time.monotonic() - started:.1f} s", flush=True)
        kinds = [RAW, SERVICE] + ([AIOMQTT] if cfg.breakdown else [])
        for n in range(1, cfg.repeat + 1):
            for kind in kinds:
                wait_idle(cfg.settle, f"run {n} {kind}")
                r = run_once(kind, n, cfg, workdir, template)
                results.append(r)
                print(progress_line(r), flush=True)
        if cfg.breakdown:
            micro = run_microbench(cfg, workdir, template)
            print(f"in-process: {micro}", flush=True)
        if cfg.profile:
            r = run_once(SERVICE, 0, cfg, workdir, template, profile=str(Path(cfg.profile).resolve()))
            print(f"profiled service run (not counted): {_k(r.rate)} msg/s; stats in {cfg.profile}", flush=True)
            _print_profile(cfg.profile)
        if cfg.py_spy:
            sampled = run_sampled(cfg, workdir, template)

    births_per_run = max(r.births for r in results)
    mean_payload = results[0].payload_bytes / results[0].published
    text, _, _, _ = summary(results, cfg)
    breakdown: list[str] = []
    if micro:
        aiomqtt_rates = [r.rate for r in results if r.kind == AIOMQTT]
        breakdown = ["Breakdown (same load):",
                     f"- aiomqtt loop alone (adapter's client and iteration, no ingest): median "
                     f"{_median(aiomqtt_rates):,.0f} msg/s, "
                     f"{_median([r.extra['cpu_us_per_msg'] for r in results if r.kind == AIOMQTT]):.1f} µs CPU/msg",
                     f"- in-process, no MQTT, {micro['messages']:,} messages: decode() {micro['decode_us']:.1f} µs/msg; "
                     f"IngestService.handle() {micro['handle_us']:.1f} µs/msg "
                     f"(≈ {1e6 / micro['handle_us']:,.0f} msg/s on one core; {micro['transitions']:,} ledger "
                     f"transitions from these messages)",
                     f"- the ledger alone (record_transitions, batches of 500, SQLite WAL): "
                     f"{micro['ledger_us']:,.0f} µs per transition ({micro['ledger_transitions']:,} transitions)"]
    spied = (["Where the service process's time goes (py-spy, one more run, share of samples of both threads in "
              "which the stage is on the stack):", "", "```", sampled, "```"] if sampled else [])
    results_section("ingest rate vs raw Mosquitto delivery", "ingest_rate.py", command,
                    conditions(cfg, info, births_per_run, mean_payload), text, run_table(results), breakdown, spied,
                    append=cfg.append)
    return 0


def run_sampled(cfg: argparse.Namespace, workdir: Path, template: Path) -> str | None:
    """One more service run (not counted) with py-spy attached to the service process; returns
    the summary of where its samples fell."""
    out = str(Path(cfg.py_spy).resolve())
    spies: list[Any] = []

    def attach(pid: int) -> None:  # before the load starts; it stops when the service process exits
        spies.append(attach_py_spy(pid, out, rate=250, duration_s=RUN_TIMEOUT_S, settle_s=1.0))

    r = run_once(SERVICE, 0, cfg, workdir, template, on_consumer=attach)
    for spy in spies:
        wait_py_spy(spy)
    print(f"sampled service run (not counted): {_k(r.rate)} msg/s; collapsed stacks in {cfg.py_spy}", flush=True)
    if not Path(out).exists():
        return None
    text = collapsed_summary(out)
    print(text, flush=True)
    return text


# Frames that name where a message's time goes, in the order of the path.
SPY_FRAMES = [
    ("event-loop thread, all", "BaseEventLoop._run_once"),
    ("paho reads the socket and parses the packet", "Client.loop_read"),
    ("  of which recv() system calls", "Client._sock_recv"),
    ("aiomqtt: queue, Task + asyncio.wait per message", "MessagesIterator.__anext__"),
    ("event loop: epoll", "EpollSelector.select"),
    ("MqttAdapter.run (adapter loop, conversions)", "MqttAdapter.run"),
    ("IngestService.handle", "IngestService.handle"),
    ("  decode (topic + pydantic)", "decode"),
    ("  Topic.parse", "Topic.parse"),
    ("  pydantic validate_json", "BaseModel.model_validate_json"),
    ("  tracker", "ConnectivityTracker."),
    ("ledger writer thread, all", "_WorkItem.run"),
    ("  record_transitions", "record_transitions"),
    ("  open_interval SELECT", "LedgerRepository.open_interval"),
    ("  Session.flush (INSERT/UPDATE per transition)", "Session.flush"),
]


def collapsed_summary(path: str) -> str:
    """Share of the service process's samples (both threads) in which each frame of SPY_FRAMES is
    on the stack."""
    total = 0
    truncated = 0
    hits = dict.fromkeys([label for label, _ in SPY_FRAMES], 0)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            names = [frame.split(" (", 1)[0] for frame in stack.split(";")]
            if names[0] not in ("<module>", "Thread._bootstrap"):
                truncated += n  # sampled without pausing the process: the stack was cut short
            for label, frame in SPY_FRAMES:
                if any(name.startswith(frame) if frame.endswith(".") else name == frame for name in names):
                    hits[label] += n
    if not total:
        return "no samples"
    return "\n".join([f"py-spy: {total} samples of the service process (active threads)"]
                     + [f"  {100 * n / total:5.1f}%  {label}" for label, n in hits.items()]
                     + [f"  {100 * truncated / total:5.1f}%  (stacks cut short, not attributed above)"])


def _print_profile(path: str, top: int = 30) -> None:
    import pstats

    stats = pstats.Stats(path)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    sys.exit(main())
