"""Telemetry write rate: points per second through the service's telemetry writer against a
raw line-protocol POST of the same points, in the same run, to the same server (a private
VictoriaMetrics on 127.0.0.1, which takes InfluxDB's /api/v2/write).

- **raw**: the points pre-encoded as line protocol, POSTed in batches of ``--batch`` with httpx
  to ``/api/v2/write`` (gzip, like the writer), one request after the other: what the server
  and one Python client take, the reference;
- **writer**: the same messages handed to ``TelemetryWriter.submit`` (as ingest does), which
  encodes them (influxdb-client's ``Point``), batches and sends them with influxdb-client.
  The rate runs from the first ``submit`` until the writer says everything is written; the
  producer waits for room in the writer's bounded queue rather than overflow it.

Runs alternate raw, writer, raw, writer ... on one server; every run writes its own receiver
ids, and the points each run left in the server are counted afterwards.

    python -m bench.telemetry_write --points 200000 --repeat 3 --append bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.harness import command_line, machine, machine_line, results_section
from fleet_service.protocol.messages import Telemetry
from fleet_service.telemetry.buffer import DiskBuffer
from fleet_service.telemetry.points import telemetry_line
from fleet_service.telemetry.tags import TagCache
from fleet_service.telemetry.writer import QUEUE_MAX, InfluxV2Sink, TelemetryWriter
from tests.support.victoria import VictoriaMetrics

# The writer's own defaults (LOA_INFLUX_BATCH_SIZE, LOA_INFLUX_FLUSH_INTERVAL_S).
BATCH = 5000
FLUSH_INTERVAL_S = 1.0
# Messages handed over between looks at the writer's queue.
SUBMIT_CHUNK = 1000
# VictoriaMetrics makes points readable within about a second; counting waits at most this.
COUNT_WAIT_S = 60.0


def make_messages(run: str, points: int, receivers: int) -> list[tuple[str, Telemetry, datetime]]:
    """A full report (every field) per point, receivers round-robin, one report per receiver per
    minute of a day in the past, so that no two points share a series and a timestamp."""
    start = datetime(2026, 11, 25, tzinfo=UTC)
    out = []
    for i in range(points):
        receiver, minute = i % receivers, i // receivers
        at = start + timedelta(minutes=minute, microseconds=receiver)
        body = {"v": 1, "session": 3, "seq": minute, "ts": int(at.timestamp()) - 1, "up": 600 + 60 * minute,
                "rssi": -70 - receiver % 30, "csq": 20, "temp": 41.5, "vin": 12.1, "amp": "on", "st": "playing",
                "kbps": 64, "urun": minute % 7, "sb": 480_000 * minute, "mem": 52_000, "fw": "1.3.0", "vol": 80,
                "skew": -120}
        out.append((f"{run}-{receiver}", Telemetry.model_validate(body), at))
    return out


def raw_run(url: str, messages: list[tuple[str, Telemetry, datetime]], batch: int) -> tuple[float, float]:
    lines = [telemetry_line(rid, "none", "none", m, at) for rid, m, at in messages]
    bodies = [("\n".join(lines[i:i + batch]) + "\n").encode() for i in range(0, len(lines), batch)]
    with httpx.Client(base_url=url, timeout=60) as client:
        wall, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            response = client.post("/api/v2/write", params={"bucket": "loa", "org": "loa", "precision": "us"},
                                   content=gzip.compress(body, 5), headers={"Content-Encoding": "gzip"})
            response.raise_for_status()
        return time.perf_counter() - wall, time.process_time() - cpu


def writer_run(url: str, messages: list[tuple[str, Telemetry, datetime]], batch: int,
               buffer_dir: Path) -> tuple[float, float, float]:
    writer = TelemetryWriter(InfluxV2Sink(url, "", "loa", "loa"), DiskBuffer(buffer_dir, 1024**3), TagCache(None),
                             batch_size=batch, flush_interval_s=FLUSH_INTERVAL_S)
    writer.start()
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        submit_s = 0.0
        for start in range(0, len(messages), SUBMIT_CHUNK):
            # A producer faster than the writer fills its bounded queue (and the writer drops
            # what does not fit): wait for room, to measure the writer's sustained rate.
            while writer.queued > QUEUE_MAX - SUBMIT_CHUNK:
                time.sleep(0.001)
            began = time.perf_counter()
            for rid, message, at in messages[start:start + SUBMIT_CHUNK]:
                writer.submit(rid, message, at)
            submit_s += time.perf_counter() - began
        while not writer.delivered():
            time.sleep(0.005)
        elapsed, cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        writer.stop()
    if writer.counters.written != len(messages):
        raise SystemExit(f"writer wrote {writer.counters.written} of {len(messages)}: {writer.counters}")
    return elapsed, cpu_s, submit_s


def stored(vm: VictoriaMetrics, run: str) -> int:
    return vm.sample_count(f'{{__name__="telemetry_seq",receiver=~"{run}-.*"}}')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry_write", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--receivers", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--append", type=Path, help="append the results as a section of this markdown file")
    args = parser.parse_args(argv)
    command = command_line("bench.telemetry_write", argv)
    info = machine(libraries=("influxdb-client", "httpx", "pydantic"))

    rows: list[tuple[int, str, float, float, float | None, int]] = []
    with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
        vm = VictoriaMetrics(Path(tmp) / "vm").start()
        try:
            rid, message, at = make_messages("x", 1, 1)[0]
            line_bytes = len(telemetry_line(rid, "none", "none", message, at))
            for run in range(1, args.repeat + 1):
                for kind in ("raw", "writer"):
                    name = f"{kind}{run}"
                    messages = make_messages(name, args.points, args.receivers)
                    if kind == "raw":
                        elapsed, cpu = raw_run(vm.url, messages, args.batch)
                        submit = None
                    else:
                        elapsed, cpu, submit = writer_run(vm.url, messages, args.batch, Path(tmp) / name)
                    deadline = time.monotonic() + COUNT_WAIT_S
                    while (count := stored(vm, name)) < args.points and time.monotonic() < deadline:
                        time.sleep(0.5)
                    rows.append((run, kind, elapsed, cpu, submit, count))
                    print(f"run {run} {kind:6}: {args.points / elapsed:9,.0f} points/s, "
                          f"{cpu / args.points * 1e6:5.1f} µs CPU/point, stored {count:,}", flush=True)
        finally:
            vm.close()

    raw = [args.points / r[2] for r in rows if r[1] == "raw"]
    written = [args.points / r[2] for r in rows if r[1] == "writer"]
    submit_us = [r[4] / args.points * 1e6 for r in rows if r[4] is not None]
    cpu_us = {k: statistics.median(r[3] / args.points * 1e6 for r in rows if r[1] == k) for k in ("raw", "writer")}
    results_section("telemetry writer vs raw line-protocol POST", "telemetry_write.py", command, [
        machine_line(info, mosquitto=False) + "; VictoriaMetrics (Debian's) on 127.0.0.1",
        f"- load: {args.points:,} telemetry points per run ({args.receivers:,} receivers, every field present, "
        f"~{line_bytes} bytes of line protocol each), batches of {args.batch:,}, gzip on both sides; "
        f"{args.repeat} runs of each, alternating, one server",
        f"- raw POST (pre-encoded, httpx, one request at a time): median **{statistics.median(raw):,.0f} points/s** "
        f"(runs: {', '.join(f'{x:,.0f}' for x in raw)}); {cpu_us['raw']:.1f} µs CPU per point in the client",
        f"- through the writer (submit → encode → batch → influxdb-client): median "
        f"**{statistics.median(written):,.0f} points/s** (runs: {', '.join(f'{x:,.0f}' for x in written)}); "
        f"{cpu_us['writer']:.1f} µs CPU per point in the service process; `submit` costs ingest "
        f"{statistics.median(submit_us):.2f} µs per message",
        f"- ratio writer/raw: **{statistics.median(written) / statistics.median(raw):.2f}×**",
        f"- points found in the server afterwards: {', '.join(f'{r[1]}{r[0]} {r[5]:,}' for r in rows)}",
    ], append=args.append)

if __name__ == "__main__":
    main()
