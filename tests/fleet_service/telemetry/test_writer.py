"""Telemetry from receivers to a real time-series server (VictoriaMetrics, which takes
InfluxDB's /api/v2/write): through the whole service (MQTT via the embedded broker, ingest,
writer), compared field by field; through an outage of the server, a restart of the service
with points still on disk, and a disk buffer filled beyond its bound."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt

from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.protocol.messages import Telemetry
from fleet_service.telemetry.buffer import DiskBuffer
from fleet_service.telemetry.tags import TagCache
from fleet_service.telemetry.writer import InfluxV2Sink, TelemetryWriter
from tests.fleet_service.telemetry.conftest import payload, running_app, telemetry_body
from tests.support.fleet import SmallFleet, provision_fleet
from tests.support.service import service_settings
from tests.support.victoria import VictoriaMetrics
from tests.support.waiting import wait_until

# The agreed schema, written out independently of the writer: wire name -> (field, conversion).
AMPLIFIER = {"off": 0, "on": 1, "fault": 2}
STREAM = {"idle": 0, "connecting": 1, "playing": 2, "buffering": 3, "error": 4}
WIRE_TO_FIELD: dict[str, tuple[str, Any]] = {
    "rssi": ("signal_dbm", int), "csq": ("signal_csq", int), "temp": ("temperature_c", float),
    "vin": ("supply_v", float), "amp": ("amplifier", AMPLIFIER.__getitem__), "st": ("stream", STREAM.__getitem__),
    "kbps": ("bitrate_kbps", int), "urun": ("underruns", int), "sb": ("stream_bytes", int),
    "mem": ("free_memory", int), "up": ("uptime_s", int), "vol": ("volume", int), "skew": ("clock_skew_ms", int),
    "seq": ("seq", int), "session": ("session", int),
}


def expected_fields(body: dict[str, Any]) -> dict[str, float]:
    return {field: convert(body[wire]) for wire, (field, convert) in WIRE_TO_FIELD.items() if wire in body}


def varied_report(receiver: int, seq: int, ts: int) -> dict[str, Any]:
    """Reports with different sets of fields, as receivers of different firmware send them."""
    body = telemetry_body(receiver + 1, seq, ts, rssi=-60 - receiver - seq, amp=["on", "off", "fault"][seq % 3],
                          st=list(STREAM)[(receiver + seq) % 5], urun=seq)
    if seq % 2 == 0:
        body.update(csq=18 + seq, temp=40.25 + seq, vin=12, kbps=64, mem=40_000 + seq, sb=1000 * seq)
    if receiver == 1:
        body.update(vol=70, skew=-1200 + seq, fw="1.3.0-rc1")
    return body


def stored_reports(vm: VictoriaMetrics, check: bool = True) -> dict[tuple[str, int, int], dict[str, Any]]:
    """What VictoriaMetrics holds, as reports: (receiver, session, seq) -> fields, labels, time.
    ``check``: fail if a sample is there twice (else: return nothing then, to wait)."""
    by_point: dict[tuple[tuple[tuple[str, str], ...], int], dict[str, float]] = defaultdict(dict)
    counts: dict[tuple[str, tuple[tuple[str, str], ...], int], int] = defaultdict(int)
    for series in vm.export('{__name__=~"telemetry_.*"}'):
        labels = {k: v for k, v in series["metric"].items() if k not in ("__name__", "db")}
        key = tuple(sorted(labels.items()))
        field = series["metric"]["__name__"].removeprefix("telemetry_")
        for value, ms in zip(series["values"], series["timestamps"], strict=True):
            by_point[(key, ms)][field] = value
            counts[(field, key, ms)] += 1
    twice = [k for k, n in counts.items() if n > 1]
    if twice and not check:
        return {}
    assert not twice, f"stored twice: {twice}"
    out = {}
    for (key, ms), fields in by_point.items():
        labels = dict(key)
        out[(labels["receiver"], int(fields["session"]), int(fields["seq"]))] = {
            "fields": fields, "labels": labels, "at": ms / 1000}
    return out


def assert_stored_as_sent(vm: VictoriaMetrics, sent: dict[str, list[dict[str, Any]]], fleet: SmallFleet,
                          region: str) -> None:
    stored = stored_reports(vm)
    assert len(stored) == sum(len(reports) for reports in sent.values())
    for receiver_id, reports in sent.items():
        for body in reports:
            point = stored[(receiver_id, body["session"], body["seq"])]
            fields = dict(point["fields"])
            delay = fields.pop("delay_s")
            assert fields == expected_fields(body), (receiver_id, body)
            assert abs(delay - (point["at"] - body["ts"])) < 0.01
            assert point["labels"] == {"receiver": receiver_id, "station": str(fleet.station_of(receiver_id)),
                                       "region": region, "fw": body["fw"]}


async def publish(settings, fleet: SmallFleet, reports: dict[str, list[dict[str, Any]]], runtime) -> None:  # type: ignore[no-untyped-def]
    for receiver_id, bodies in reports.items():
        async with aiomqtt.Client("127.0.0.1", settings.mqtt_port, username=receiver_id, identifier=receiver_id,
                                  password=fleet.credentials[receiver_id], timeout=10) as client:
            for body in bodies:
                await client.publish(f"loa/v1/rx/{receiver_id}/telemetry", payload(body), qos=1)
                # VictoriaMetrics keeps milliseconds: two reports of one receiver received within
                # the same millisecond would share a timestamp there (real ones are a minute apart).
                # So the next report goes once the service has received this one, and a little
                # later: on a loaded machine, reports sent 2 ms apart can be taken in at once.
                await wait_until(lambda: heard(runtime, receiver_id, body), timeout=30, interval=0.005,
                                 what=f"{receiver_id}'s report {body['seq']} received")
                await asyncio.sleep(0.002)


def heard(runtime, receiver_id: str, body: dict[str, Any]) -> bool:  # type: ignore[no-untyped-def]
    """The service's live view holds this report as the receiver's latest."""
    live = runtime.ingest.telemetry.get(receiver_id)
    return live is not None and (live.session, live.seq) == (body["session"], body["seq"])


def make_settings(sqlite_url: str, vm: VictoriaMetrics | None, buffer_dir: Path, **overrides: Any):  # type: ignore[no-untyped-def]
    extra = {"influx_url": vm.url} if vm is not None else {}
    return service_settings(sqlite_url, influx_buffer_dir=str(buffer_dir), influx_flush_interval_s=0.2,
                            influx_batch_size=50, **extra, **overrides)


async def status(client) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    response = await client.get("/api/v1/telemetry/status")
    assert response.status_code == 200, response.text
    return response.json()


async def wait_status(client, predicate, what: str, timeout: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        current = await status(client)
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; status: {current}")
        await asyncio.sleep(0.1)


async def test_receivers_telemetry_reaches_the_server_field_by_field(sqlite_url, vm: VictoriaMetrics, tmp_path):
    fleet = provision_fleet(make_sessionmaker(make_engine(sqlite_url)), receivers=3)
    settings = make_settings(sqlite_url, vm, tmp_path / "buffer")
    ts = int(datetime.now(UTC).timestamp()) - 30
    sent = {f"rx-{r}": [varied_report(r, seq, ts + seq) for seq in range(4)] for r in range(3)}
    async with running_app(settings) as (_app, runtime, client):
        await publish(settings, fleet, sent, runtime)
        final = await wait_status(client, lambda s: s["written"] == 12, "12 points written")
        await wait_until(lambda: len(stored_reports(vm, check=False)) == 12, timeout=30, what="points readable")
    assert_stored_as_sent(vm, sent, fleet, region="rx-p/rx-c")
    assert final["enabled"] and final["buffered_points"] == 0 and final["dropped_beyond_bound"] == 0
    assert final["tagged_receivers"] == 3


async def test_outage_is_buffered_on_disk_and_replayed_while_the_api_answers(sqlite_url, vm: VictoriaMetrics,
                                                                             tmp_path):
    fleet = provision_fleet(make_sessionmaker(make_engine(sqlite_url)), receivers=2)
    settings = make_settings(sqlite_url, vm, tmp_path / "buffer")
    ts = int(datetime.now(UTC).timestamp()) - 100
    before = {"rx-0": [varied_report(0, 0, ts)]}
    during = {f"rx-{r}": [varied_report(r, seq, ts + seq) for seq in range(1, 21)] for r in range(2)}
    async with running_app(settings) as (_app, runtime, client):
        await publish(settings, fleet, before, runtime)
        await wait_status(client, lambda s: s["written"] == 1, "the first point")

        await asyncio.to_thread(vm.stop)
        await publish(settings, fleet, during, runtime)
        down = await wait_status(client, lambda s: s["buffered_points"] == 40 and s["queued"] == 0,
                                 "40 points on disk")
        assert down["outage_since"] is not None and down["failures"] >= 1 and "InfluxDB" in down["message"]
        assert list((tmp_path / "buffer").glob("*.lp"))
        started = time.monotonic()
        live = await client.get("/api/v1/live/receivers")
        assert live.status_code == 200 and len(live.json()["receivers"]) == 2
        assert time.monotonic() - started < 5

        await asyncio.to_thread(vm.start)
        up = await wait_status(client, lambda s: s["written"] == 41 and s["buffered_points"] == 0,
                               "the buffer replayed", timeout=90)
        assert up["replayed"] == 40 and up["outage_since"] is None and up["dropped_beyond_bound"] == 0
        await wait_until(lambda: len(stored_reports(vm, check=False)) == 41, timeout=30, what="points readable")
    assert_stored_as_sent(vm, {"rx-0": before["rx-0"] + during["rx-0"], "rx-1": during["rx-1"]}, fleet,
                          region="rx-p/rx-c")
    assert not list((tmp_path / "buffer").glob("*.lp"))


async def test_points_left_on_disk_are_replayed_when_the_service_starts_again(sqlite_url, vm: VictoriaMetrics,
                                                                              tmp_path):
    fleet = provision_fleet(make_sessionmaker(make_engine(sqlite_url)), receivers=2)
    settings = make_settings(sqlite_url, vm, tmp_path / "buffer")
    ts = int(datetime.now(UTC).timestamp()) - 100
    sent = {f"rx-{r}": [varied_report(r, seq, ts + seq) for seq in range(10)] for r in range(2)}
    vm.stop()
    async with running_app(settings) as (_app, runtime, client):
        await publish(settings, fleet, sent, runtime)
        await wait_status(client, lambda s: s["buffered_points"] == 20 and s["queued"] == 0, "20 points on disk")
    assert list((tmp_path / "buffer").glob("*.lp"))

    vm.start()
    async with running_app(settings) as (_app, _runtime, client):
        after = await wait_status(client, lambda s: s["written"] == 20 and s["buffered_points"] == 0,
                                  "the left-over buffer replayed")
        assert after["replayed"] == 20
        await wait_until(lambda: len(stored_reports(vm, check=False)) == 20, timeout=30, what="points readable")
    assert_stored_as_sent(vm, sent, fleet, region="rx-p/rx-c")


async def test_beyond_the_bound_the_oldest_are_dropped_counted_and_alerted(vm: VictoriaMetrics, tmp_path, caplog):
    bound = 16 * 1024
    writer = TelemetryWriter(InfluxV2Sink(vm.url, "", "loa", "loa"), DiskBuffer(tmp_path / "buffer", bound),
                             TagCache(None), batch_size=20, flush_interval_s=0.05, retry_max_s=0.5)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    vm.stop()
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="fleet_service.telemetry.writer"):
            for seq in range(400):
                writer.submit("rx-0", Telemetry.model_validate(telemetry_body(1, seq, int(t0.timestamp()) + seq,
                                                                              rssi=-70)), t0 + timedelta(seconds=seq))
            await wait_until(writer.settled, timeout=30, what="all 400 handled")
            dropped = writer.counters.dropped_beyond_bound
            assert dropped > 0 and writer.buffered_bytes <= bound
            assert writer.buffered_points + dropped == 400
            alerts = [r.message for r in caplog.records if "telemetry points dropped" in r.message]
            assert len(alerts) == 1 and f"bound ({bound} bytes)" in alerts[0]

            vm.start()
            await wait_until(writer.delivered, timeout=60, what="the buffer replayed")
    finally:
        writer.stop()
    assert writer.counters.written == 400 - dropped
    await wait_until(lambda: vm.sample_count('{__name__="telemetry_seq"}') == 400 - dropped, timeout=30,
                     what="points readable")
    seqs = sorted(int(v) for s in vm.export('{__name__="telemetry_seq"}') for v in s["values"])
    assert seqs == list(range(dropped, 400)), "the newest points are the ones kept"
