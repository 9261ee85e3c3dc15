"""Events from the board's readings (loa/app.py Receiver._check_board) on the simulated board:
amp_fault / amp_recovered, low_supply, overheat, each raised once per crossing of its threshold
however long the reading hovers around it; the simulated board reads sim.json again on the
console line "sim"."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.firmware.conftest import FIRMWARE, MICROPYTHON, micropython_env

PROGRAM = """
import asyncio, json
from loa import app, config
from loa.hal.sim import SimBoard
from loa.state import State
cfg = config.load()
board = SimBoard(cfg)
rx = app.Receiver(board, cfg, State(), log=lambda *a: None)
def check(n=1, **values):
    board.values.update(values)
    for _ in range(n):
        rx._check_board()
async def main():
    check(5)                                   # the defaults: nothing to report
    for vin in (10.9, 11.2, 10.8, 11.4, 10.9):  # hovering under the threshold: once
        check(vin=vin)
    check(vin=11.6)                            # back up: armed again
    check(vin=10.5)
    for temp in (86.0, 84.0, 86.5, 81.0):      # hovering at the threshold: once
        check(temp=temp)
    check(temp=79.0)
    board.set_amp(True)
    check(2, amp_fault=True)                   # shorter than AMP_CHECKS: not yet a fault
    check(1, amp_fault=False)
    check(app.AMP_CHECKS, amp_fault=True)
    check(app.AMP_CHECKS - 1, amp_fault=False)  # flickering back: not yet recovered
    check(3, amp_fault=True)
    check(app.AMP_CHECKS, amp_fault=False)
    board.set_amp(False)
    check(app.AMP_CHECKS, amp_fault=True)      # relay off: no current expected, no fault
    # The console line "sim" reads sim.json again.
    with open("sim.json", "w") as f:
        json.dump({"temp": 90.5}, f)
    board.start()
    for _ in range(50):
        if board.values["temp"] == 90.5:
            break
        await asyncio.sleep_ms(10)
    check()
    for event in rx.events:
        print(event[1], event[2])
asyncio.run(main())
"""


def test_board_readings_raise_events_once_per_crossing(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"id": "rx-b", "password": "p", "host": "127.0.0.1"}))
    assert MICROPYTHON
    # Compiling app.py from source takes more heap than the receiver has (it runs .mpy).
    result = subprocess.run([MICROPYTHON, "-X", "heapsize=512k", "-c", PROGRAM], cwd=tmp_path,
                            env=micropython_env(str(FIRMWARE)), input="sim\n", capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "low_supply None", "low_supply None", "overheat None",
        "amp_fault None", "amp_recovered None", "overheat None"]
