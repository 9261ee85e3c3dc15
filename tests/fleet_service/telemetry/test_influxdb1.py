"""The writer against Debian's InfluxDB 1.6.7 (``/write``): its line protocol is accepted, the
schema's field types hold, the dashboards' InfluxQL answers as expected, and a batch the
server refuses as bad data is dropped with the server's message, not retried for ever."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.protocol.messages import Event, Telemetry
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate
from fleet_service.telemetry.buffer import DiskBuffer
from fleet_service.telemetry.tags import TagCache
from fleet_service.telemetry.writer import InfluxV1Sink, TelemetryWriter
from tests.fleet_service.telemetry.conftest import populate_registry, telemetry_body
from tests.support.influxdb1 import Influx1
from tests.support.waiting import wait_until

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def writer_for(influx: Influx1, directory: Path, sessions) -> TelemetryWriter:  # type: ignore[no-untyped-def]
    tags = TagCache(sessions)
    tags.load()
    return TelemetryWriter(InfluxV1Sink(influx.url, "", "loa"), DiskBuffer(directory, 1024 * 1024), tags,
                           batch_size=50, flush_interval_s=0.1, retry_max_s=1)


async def test_line_protocol_is_accepted_and_answers_the_dashboards_influxql(influx: Influx1, tmp_path: Path,
                                                                             session_factory):
    _, an_khanh, hung_son = populate_registry(session_factory)
    with session_scope(session_factory) as s:
        registry.register_receiver(s, ReceiverCreate(id="rx-2", hardware_id="hw-rx-2", station_id=hung_son))
    writer = writer_for(influx, tmp_path / "buffer", session_factory)
    writer.start()
    try:
        for minute in range(3):
            at = T0 + timedelta(minutes=minute)
            writer.submit("rx-1", Telemetry.model_validate(telemetry_body(
                7, minute, int(at.timestamp()) - 2, rssi=-70 - minute, csq=20, temp=41.5, vin=12, kbps=64, urun=minute,
                sb=1000 * minute, mem=50_000, vol=80, skew=-1500, fw="1.2.0 beta")), at)
            writer.submit("rx-2", Telemetry.model_validate(telemetry_body(
                3, minute, int(at.timestamp()), rssi=-90 + minute, amp="fault", st="buffering")), at)
        # A burst of queued events arriving within one second: none may overwrite another.
        for i, detail in enumerate(["sched:m1", "", 'a "quoted", odd=detail']):
            writer.submit("rx-1", Event.model_validate({"v": 1, "session": 7, "ts": 1, "kind": "play_started",
                                                        "detail": detail}), T0 + timedelta(microseconds=10 * i))
        await wait_until(writer.delivered, timeout=30, what="points written")
    finally:
        writer.stop()
    assert (writer.counters.written, writer.counters.rejected) == (9, 0)

    last = influx.query("loa", "SELECT last(signal_dbm) FROM telemetry GROUP BY receiver")
    assert {s["tags"]["receiver"]: s["values"][0][1:] for s in last} == {"rx-1": [-72], "rx-2": [-88]}
    assert [s["values"][0][0] for s in last] == [int((T0 + timedelta(minutes=2)).timestamp())] * 2

    fields = influx.query("loa", "SHOW FIELD KEYS FROM telemetry")[0]["values"]
    assert dict(map(tuple, fields)) == {
        "amplifier": "integer", "stream": "integer", "delay_s": "float", "signal_dbm": "integer",
        "signal_csq": "integer", "temperature_c": "float", "supply_v": "float", "bitrate_kbps": "integer",
        "underruns": "integer", "stream_bytes": "integer", "free_memory": "integer", "uptime_s": "integer",
        "volume": "integer", "clock_skew_ms": "integer", "seq": "integer", "session": "integer"}
    rx2 = influx.query("loa", "SELECT amplifier, stream, delay_s, supply_v FROM telemetry WHERE receiver = 'rx-2'")
    assert [row[1:] for row in rx2[0]["values"]] == [[2, 3, 0.0, None]] * 3
    rx1 = influx.query("loa", "SELECT delay_s, supply_v, fw, station, region FROM telemetry WHERE receiver = 'rx-1' LIMIT 1")
    assert rx1[0]["values"][0][1:] == [2.0, 12.0, "1.2.0 beta", str(an_khanh),
                                    "thai-nguyen/dai-tu/an-khanh"]

    regions = influx.query("loa", "SELECT count(signal_dbm) FROM telemetry WHERE region =~ /^thai-nguyen\\/dai-tu/ "
                                  "GROUP BY region")
    assert {s["tags"]["region"]: s["values"][0][1] for s in regions} == {
        "thai-nguyen/dai-tu/an-khanh": 3, "thai-nguyen/dai-tu/hung-son": 3}
    events = influx.query("loa", "SELECT sum(count) FROM event GROUP BY kind")
    assert [(s["tags"]["kind"], s["values"][0][1]) for s in events] == [("play_started", 3)]
    details = influx.query("loa", "SELECT detail FROM event")[0]["values"]
    assert [row[1] for row in details] == ["sched:m1", "", 'a "quoted", odd=detail']


async def test_a_batch_refused_as_bad_data_is_dropped_with_the_servers_message(influx: Influx1, tmp_path: Path,
                                                                               caplog, sqlite_url):
    sessions = make_sessionmaker(make_engine(sqlite_url))
    populate_registry(sessions)
    # Someone wrote delay_s as an integer into this shard: the writer's float is a type conflict.
    influx.write("loa", f"telemetry,receiver=legacy delay_s=5i {int(T0.timestamp())}")
    writer = writer_for(influx, tmp_path / "buffer", sessions)
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="fleet_service.telemetry.writer"):
            writer.submit("rx-1", Telemetry.model_validate(telemetry_body(1, 0, int(T0.timestamp()), rssi=-80)), T0)
            await wait_until(lambda: writer.counters.rejected == 1, timeout=30, what="the refusal")
            # The writer goes on: the next batch (no conflicting field) is written.
            writer.submit("rx-1", Event.model_validate({"v": 1, "session": 1, "ts": 1, "kind": "boot"}), T0)
            await wait_until(lambda: writer.counters.written == 1, timeout=30, what="the next batch")
    finally:
        writer.stop()
    assert writer.counters.failures == 0 and writer.buffered_points == 0
    assert "field type conflict" in writer.counters.last_error
    assert any("refused a batch of 1 points" in r.message and "field type conflict" in r.message
               for r in caplog.records)
    assert influx.query("loa", "SELECT count(count) FROM event")[0]["values"][0][1] == 1
