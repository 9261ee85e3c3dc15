"""Command decoding in the firmware (firmware/loa/commands.py), on the real micropython
interpreter, against the protocol's own definition: for every payload the firmware must reach
the verdict of ``fleet_service.protocol.decode_command`` (the command, or the rejection reason
and whether the id was usable), and for a valid command the same values."""

from __future__ import annotations

import json
import random
import re
from datetime import date
from pathlib import Path

import pytest

from fleet_service.protocol import CommandError, command_topic, decode_command
from fleet_service.protocol.messages import COMMAND_MAX_BYTES, ConfigCommand, PlayCommand, ScheduleCommand, VolumeCommand
from tests.firmware.conftest import FIRMWARE, run_micropython

EPOCH = date(1970, 1, 1)
RANK = {"normal": 0, "priority": 1, "emergency": 2}

BASE = {"v": 1, "id": "c-1", "pri": "normal", "ts": 1_700_000_000, "exp": 1_700_003_600}
SLOT = {"id": "morning", "s": "05:30", "e": "06:15", "d": 31, "u": "http://radio.example/live.mp3", "p": "priority",
        "f": "2025-01-01", "t": "2025-12-31", "vol": 70}
VALID = {
    "play": {**BASE, "op": "play", "url": "https://stream.example/xa.mp3", "dur": 600},
    "stop": {**BASE, "op": "stop"},
    "volume": {**BASE, "op": "volume", "vol": 55},
    "reboot": {**BASE, "op": "reboot"},
    "config": {**BASE, "op": "config", "set": {"telemetry_interval": 120, "keepalive": 90, "ntp": "ntp.example.vn"}},
    "schedule": {**BASE, "op": "schedule", "ver": 7, "tz": 420,
                 "slots": [SLOT, {"id": "noon", "s": "11:00:00", "e": "11:30", "u": "http://b.example/x",
                                  "p": "emergency"}]},
}

# Values tried in place of each field: each is valid somewhere and wrong somewhere else.
INTS = [0, 1, -1, 5, 10, 30, 100, 101, 1200, 3600, 86400, 86401, 2**32 - 1, 2**32, 2**40, True, False, 5.0, 5.5, -0.0,
        1e19, "5", " 7 ", "+8", "-3", "1_000", "1__0", "_1", "5.0", "5.", "5.10", "0x10", "1e3", "\u00a05", "", "x",
        None, [], {}]
STRS = ["", "a", "A-z_9", "a b", "a.b", "ünï", "x" * 16, "x" * 17, "x" * 32, "x" * 33, "x" * 65, 5, None, True, []]
URLS = ["http://a", "https://a.example/x?y=1", "ftp://a", "http://a b", "http://a\u00a0b", "http://a\x1c", "HTTP://a",
        "http://" + "x" * 249, "http://" + "x" * 250, "", 5, None]
TIMES = ["00:00", "23:59", "24:00", "12:60", "12:5", "1:00", "12:00:59", "12:00:60", "12:00:00\n", "12:00\n", "12-00",
         " 12:00", "23:59:59", 1200, None]
DATES = ["2025-01-01", "2024-02-29", "2023-02-29", "2025-13-01", "2025-04-31", "0000-01-01", "0001-01-01",
         "9999-12-31", "2025-1-1", "2025/01/01", " 2025-01-01", None, 5]
PRIS = ["normal", "priority", "emergency", "NORMAL", "", None, 1]


def _vals(field: str) -> list[object]:
    return {
        "v": [1, 2, 0, True, False, 1.0, "1", None], "id": STRS, "command_id": STRS, "pri": PRIS, "priority": PRIS,
        "ts": INTS, "exp": INTS, "issued_at": INTS, "url": URLS, "dur": INTS, "duration_s": INTS, "vol": INTS,
        "volume": INTS, "ver": INTS, "version": INTS, "schedule_version": INTS, "tz": INTS, "tz_offset_min": INTS,
        "op": ["play", "stop", "Play", "", None, 5, "dance"],
    }.get(field, STRS)


def _corpus() -> list[bytes]:
    cases: list[object] = []
    for op, valid in VALID.items():
        cases.append(valid)
        for field in list(valid) + ["command_id", "priority", "issued_at", "version", "duration_s", "volume",
                                    "schedule_version", "tz_offset_min", "extra"]:
            for value in _vals(field):
                cases.append({**valid, field: value})
            if field in valid:
                cases.append({k: v for k, v in valid.items() if k != field})
    config = VALID["config"]
    for key, values in {"telemetry_interval": INTS, "keepalive": INTS, "ntp": STRS + ["a\n", "a_b", "x" * 64]}.items():
        for value in values:
            cases.append({**config, "set": {key: value}})
    for settings in ({}, {"wifi": 1}, {"ntp": "a", "apn": "b"}, [], None, "x", {"telemetry_interval": None}):
        cases.append({**config, "set": settings})
    schedule = VALID["schedule"]
    slot_fields = {"id": STRS, "s": TIMES, "e": TIMES, "d": INTS, "u": URLS, "p": PRIS, "f": DATES, "t": DATES,
                   "vol": INTS, "slot_id": STRS, "start": TIMES, "url": URLS, "days": INTS}
    for field, values in slot_fields.items():
        for value in values:
            cases.append({**schedule, "slots": [{**SLOT, field: value}]})
        cases.append({**schedule, "slots": [{k: v for k, v in SLOT.items() if k != field}]})
    for slots in ([], None, "x", [SLOT] * 2, [SLOT, 5], [{**SLOT, "id": f"s{i}", "s": f"{i:02}:00", "e": f"{i:02}:30"}
                                                         for i in range(24)],
                  [{**SLOT, "id": f"s{i}", "s": f"{i:02}:00", "e": f"{i:02}:30"} for i in range(24)] + [{**SLOT, "id": "x"}],
                  [SLOT, {**SLOT, "id": "b", "s": "06:00", "e": "07:00"}],             # overlaps 06:00-06:15
                  [SLOT, {**SLOT, "id": "b", "s": "06:15", "e": "07:00"}],             # back to back
                  [SLOT, {**SLOT, "id": "b", "d": 96}],                                 # other days
                  [SLOT, {**SLOT, "id": "b", "f": "2026-01-01", "t": None}],            # later validity
                  [SLOT, {**SLOT, "id": "b", "f": "2025-12-31", "t": None}],            # one common day
                  [{**SLOT, "f": "2025-02-01", "t": "2025-01-31"}], [{**SLOT, "s": "07:00", "e": "07:00"}]):
        cases.append({**schedule, "slots": slots})
    rng = random.Random(20251126)
    pools = {**{f: _vals(f) for f in ("v", "id", "pri", "ts", "exp", "url", "dur", "vol", "ver", "tz", "op")}}
    for _ in range(1500):
        case = dict(rng.choice(list(VALID.values())))
        for field in rng.sample(sorted(pools), rng.randint(1, 3)):
            if rng.random() < 0.2:
                case.pop(field, None)
            else:
                case[field] = rng.choice(pools[field])
        cases.append(case)
    payloads = [json.dumps(c).encode() for c in cases]
    payloads += [b"", b"null", b"[1]", b"\"play\"", b"{", b"\xff\xfe{}", b"{\"id\":\"a\"}",
                 json.dumps({**VALID["stop"], "pad": "x" * COMMAND_MAX_BYTES}).encode(),
                 json.dumps({**VALID["stop"], "pad": "x" * (COMMAND_MAX_BYTES - 200)}).encode()]
    # What JSON allows and what it does not, beyond what MicroPython's parser checks: nesting
    # (32 deep at most, outside strings), UTF-8 (no overlong forms, surrogates or beyond
    # U+10FFFF), no NaN or Infinity, no other encoding.
    stop = json.dumps(VALID["stop"]).encode()[:-1]
    for extra in [b"[" * 31 + b"]" * 31, b"[" * 32 + b"]" * 32, b"[" * 33 + b"]" * 33, b'"' + b"[" * 40 + b'"',
                  b'"\\"' + b"[" * 40 + b'"', b'"\\\\"' + b"[" * 33 + b"]" * 33,
                  b'"\xc3\xa9"', b'"\xc0\x80"', b'"\xed\xa0\x80"', b'"\xed\x9f\xbf"', b'"\xf4\x8f\xbf\xbf"',
                  b'"\xf4\x90\x80\x80"', b'"\xf5\x80\x80\x80"', b'"\\ud800"', b"NaN", b"-Infinity", b"1e400",
                  b"9" * 5000]:
        payloads.append(stop + b', "x": ' + extra + b"}")
    payloads += [json.dumps({**VALID["play"], "url": "http://a/\ud800"}).encode(),
                 json.dumps(VALID["stop"]).encode("utf-16"), b"\xef\xbb\xbf" + json.dumps(VALID["stop"]).encode()]
    return payloads


def _day(value: date | None, default: int) -> int:
    return default if value is None else (value - EPOCH).days


def _expected(payload: bytes) -> list[object]:
    """The definition's verdict, in the shape the firmware prints."""
    try:
        cmd = decode_command(payload)
    except CommandError as exc:
        return ["rejected", exc.reason.value, exc.command_id]
    out: dict[str, object] = {"op": cmd.op.value, "id": cmd.command_id, "pri": cmd.priority.rank,
                              "ts": cmd.issued_at, "exp": cmd.expires_at}
    if isinstance(cmd, PlayCommand):
        out.update(url=cmd.url, dur=cmd.duration_s)
    elif isinstance(cmd, VolumeCommand):
        out.update(vol=cmd.volume)
    elif isinstance(cmd, ConfigCommand):
        out.update(set=cmd.settings.model_dump(exclude_none=True))
    elif isinstance(cmd, ScheduleCommand):
        out.update(ver=cmd.schedule_version, tz=cmd.tz_offset_min, slots=[
            [s.slot_id, *s.seconds(), s.days, s.url, s.priority.rank, _day(s.valid_from, -719162),
             _day(s.valid_to, 2932896), -1 if s.volume is None else s.volume] for s in cmd.slots])
    return ["ok", out]


DECODE_ALL = """
import json, gc
from loa import commands
out = open("verdicts.txt", "w")
count = 0
for line in open("cases.txt"):
    payload = bytes.fromhex(line.strip())
    count += 1
    try:
        cmd = commands.decode(payload)
        if "slots" in cmd:
            cmd["slots"] = [list(s) for s in cmd["slots"]]
        verdict = ["ok", cmd]
    except commands.Rejected as exc:
        verdict = ["rejected", exc.reason, exc.command_id]
    out.write(json.dumps(verdict) + "\\n")
    gc.collect()
out.close()
print("decoded", count)
"""


def test_every_command_gets_the_verdict_of_the_protocol_definition(tmp_path: Path) -> None:
    payloads = _corpus()
    (tmp_path / "cases.txt").write_text("\n".join(p.hex() for p in payloads) + "\n")
    result = run_micropython(DECODE_ALL, tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = [json.loads(line) for line in (tmp_path / "verdicts.txt").read_text().splitlines()]
    assert len(verdicts) == len(payloads)
    mismatches = []
    reasons = set()
    for payload, verdict in zip(payloads, verdicts, strict=True):
        expected = _expected(payload)
        reasons.add(expected[1] if expected[0] == "rejected" else "ok")
        if verdict != expected:
            mismatches.append(f"{payload[:300]!r}\n   firmware {verdict}\n   protocol {expected}")
    assert not mismatches, f"{len(mismatches)} of {len(payloads)} differ:\n" + "\n".join(mismatches[:15])
    # The corpus reaches every verdict a command can get from decoding.
    assert reasons == {"ok", "malformed", "unknown_op", "volume_range", "bad_url", "bad_schedule", "unknown_setting"}


LEDGER = """
import os
from loa.commands import Ledger, REMEMBERED
ledger = Ledger()
assert ledger.get("a") is None
ledger.remember("a", "accepted")
ledger.remember("b", "rejected", "bad_url")
assert Ledger().get("a") == ["a", "failed", "interrupted"]  # the power went during "a"
ledger.remember("a", "done")
assert Ledger().get("a") == ["a", "done", None] and Ledger().get("b") == ["b", "rejected", "bad_url"]
for i in range(REMEMBERED):
    ledger.remember("c%d" % i, "done")
again = Ledger()
assert again.get("a") is None and again.get("b") is None and again.get("c0") == ["c0", "done", None]
assert len(again.entries) == REMEMBERED
assert "commands.json.tmp" not in os.listdir()
# A torn write of the new file leaves the old one in force.
with open("commands.json.tmp", "w") as f:
    f.write('{"c": [["zz", "do')
assert Ledger().get("c5") == ["c5", "done", None]
print("ok")
"""


def test_the_ledger_remembers_the_last_32_outcomes_across_restarts(tmp_path: Path) -> None:
    result = run_micropython(LEDGER, tmp_path)
    assert result.returncode == 0 and result.stdout.endswith("ok\n"), result.stdout + result.stderr


LARGEST = """
import gc
from loa import app, commands  # every module of the firmware in the heap, as when it runs
with open("payload.bin", "rb") as f:
    payload = f.read()
gc.collect()
try:
    cmd = commands.decode(payload)
    print("ok", len(cmd.get("slots", ())))
except commands.Rejected as exc:
    print("rejected", exc.reason)
gc.collect()
print("free", gc.mem_free())
"""


@pytest.mark.parametrize(("payload", "verdict"), [
    # Nested far deeper than the protocol allows (32): the receiver must still answer, not
    # run out of heap.
    (b"[" * 3000, ["rejected", "malformed"]),
    (json.dumps({**VALID["schedule"], "slots": [
        {**SLOT, "id": f"s{i}", "s": f"{i:02}:00", "e": f"{i:02}:30", "u": "http://" + "x" * 195}
        for i in range(24)]}).encode(), ["ok", "24"]),
], ids=["nested", "24_slots"])
def test_the_largest_commands_decode_in_the_firmware_heap(tmp_path: Path, compiled_firmware: Path, payload: bytes,
                                                          verdict: list[str]) -> None:
    assert len(payload) <= COMMAND_MAX_BYTES
    if verdict[0] == "ok":
        assert _expected(payload)[0] == "ok"
    (tmp_path / "payload.bin").write_bytes(payload)
    # Compiled, as a receiver's flash holds it: loading sources fragments the heap the test is about.
    result = run_micropython(LARGEST, tmp_path, paths=(str(compiled_firmware),))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split()[:2] == verdict, result.stdout


def test_the_mqtt_client_reads_the_largest_command_the_protocol_allows() -> None:
    """MAX_PACKET in loa/mqtt.py is the PUBLISH of the largest command on the longest command
    topic: the topic's length field, the topic, the packet id and the payload."""
    source = (FIRMWARE / "loa" / "mqtt.py").read_text()
    max_packet = int(re.search(r"^MAX_PACKET = const\((\d+)\)", source, re.M)[1])
    longest_topic = command_topic("r" * 64).encode()  # receiver ids are at most 64 characters
    assert max_packet == 2 + len(longest_topic) + 2 + COMMAND_MAX_BYTES
