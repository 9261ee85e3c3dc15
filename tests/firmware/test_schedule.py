"""The broadcast schedule table (firmware/loa/schedule.py) on the real micropython interpreter:
which slot is in force at a given instant (local time = UTC + tz, days bit 0 = Monday, valid
from/to inclusive, start inclusive, end exclusive), storage on flash, and day numbers that
agree with Python's calendar. Running slots against the clock, connected or not, is in
test_receiver.py."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from fleet_service.protocol import decode_command
from fleet_service.protocol.messages import ScheduleCommand
from tests.firmware.conftest import run_micropython

ICT = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh, no daylight saving


def unix(local: str, tz: timezone = ICT) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=tz).timestamp())


def schedule_command(slots: list[dict], tz: int = 420, ver: int = 3) -> bytes:
    payload = json.dumps({"v": 1, "id": "s1", "op": "schedule", "ts": 0, "exp": 2**31, "ver": ver, "tz": tz,
                          "slots": slots}).encode()
    assert isinstance(decode_command(payload), ScheduleCommand)  # valid by the protocol's definition
    return payload


def in_force(tmp_path: Path, payload: bytes, instants: list[int]) -> list[str | None]:
    """The slot id the firmware finds in force at each instant, after storing the schedule
    and loading it back from flash in a fresh table."""
    (tmp_path / "cmd.json").write_bytes(payload)
    script = f"""
from loa import commands
from loa.schedule import Schedule
cmd = commands.decode(open("cmd.json", "rb").read())
Schedule().store(cmd["ver"], cmd["tz"], cmd["slots"])
table = Schedule()
table.load()
assert table.version == cmd["ver"] and table.tz == cmd["tz"] and table.count == len(cmd["slots"])
for t in {instants!r}:
    i = table.current(t)
    print(table.ids[i] if i >= 0 else "-")
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return [None if line == "-" else line for line in result.stdout.splitlines()]


def test_slots_run_by_local_time_start_inclusive_end_exclusive(tmp_path: Path) -> None:
    payload = schedule_command([
        {"id": "sang", "s": "05:30", "e": "06:00", "u": "http://a/x"},
        {"id": "trua", "s": "11:00:00", "e": "11:00:30", "u": "http://a/y", "p": "priority"},
        {"id": "toi", "s": "18:00", "e": "23:59:59", "u": "http://a/z"},
    ])
    instants = ["2025-11-26T05:29:59", "2025-11-26T05:30:00", "2025-11-26T05:59:59", "2025-11-26T06:00:00",
                "2025-11-26T11:00:29", "2025-11-26T11:00:30", "2025-11-26T23:59:58", "2025-11-26T23:59:59",
                "2025-11-27T00:00:00"]
    assert in_force(tmp_path, payload, [unix(t) for t in instants]) == [
        None, "sang", "sang", None, "trua", None, "toi", None, None]


def test_days_mask_and_validity_dates_are_those_of_the_station(tmp_path: Path) -> None:
    # 2025-11-24 is a Monday. At 06:30 in Hanoi it is still Sunday 23:30 in UTC: the local
    # day decides.
    payload = schedule_command([
        {"id": "mon", "s": "06:00", "e": "07:00", "d": 0b0000001, "u": "http://a/x"},
        {"id": "weekend", "s": "06:00", "e": "07:00", "d": 0b1100000, "u": "http://a/y",
         "f": "2025-11-29", "t": "2025-11-29"},
    ])
    instants = {"2025-11-24T06:30:00": "mon", "2025-11-25T06:30:00": None, "2025-12-01T06:30:00": "mon",
                "2025-11-29T06:30:00": "weekend", "2025-11-30T06:30:00": None, "2025-11-22T06:30:00": None}
    assert in_force(tmp_path, payload, [unix(t) for t in instants]) == list(instants.values())


def test_the_offset_of_the_schedule_is_used(tmp_path: Path) -> None:
    payload = schedule_command([{"id": "utc", "s": "00:00", "e": "01:00", "u": "http://a/x"}], tz=0)
    utc = timezone.utc
    assert in_force(tmp_path, payload, [unix("2025-11-26T00:30:00", utc), unix("2025-11-26T07:30:00", utc)]) == [
        "utc", None]
    west = schedule_command([{"id": "west", "s": "20:00", "e": "21:00", "u": "http://a/x"}], tz=-300)
    assert in_force(tmp_path, west, [unix("2025-11-27T01:30:00", utc)]) == ["west"]


def test_a_full_schedule_of_24_slots_fits_the_preallocated_table(tmp_path: Path) -> None:
    slots = [{"id": f"h{h}", "s": f"{h:02}:00", "e": f"{h:02}:59", "u": f"http://a/{h}"} for h in range(24)]
    found = in_force(tmp_path, schedule_command(slots), [unix(f"2025-11-26T{h:02}:30:00") for h in range(24)])
    assert found == [f"h{h}" for h in range(24)]


def test_day_numbers_match_the_calendar(tmp_path: Path) -> None:
    days = [date(1, 1, 1), date(1969, 12, 31), date(1970, 1, 1), date(2000, 2, 29), date(2024, 2, 29),
            date(2025, 11, 26), date(2100, 3, 1), date(9999, 12, 31)]
    script = "from loa.schedule import days_from_civil\n" + "".join(
        f"print(days_from_civil({d.year}, {d.month}, {d.day}))\n" for d in days)
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert [int(x) for x in result.stdout.split()] == [(d - date(1970, 1, 1)).days for d in days]


def test_an_unreadable_schedule_file_leaves_no_schedule(tmp_path: Path) -> None:
    (tmp_path / "schedule.json").write_text(json.dumps({"ver": 2, "tz": 420, "slots": [["x", 1, 2]]}))
    script = """
from loa.schedule import Schedule
table = Schedule()
table.load()
print(table.version, table.count, table.current(1764100000))
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "None 0 -1"
    assert "ignoring an unreadable schedule.json" in result.stdout
