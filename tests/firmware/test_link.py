"""The link layer (firmware/loa/link.py; the 4G link is in loa/ppp.py, its AT layer in loa/modem.py) on the real micropython
interpreter: which link the config chooses, and the 4G path (AT layer, dial, PPP) on the
simulated board with a scripted modem (tests/firmware/mp/scripted_port.py). network.PPP and
network.WLAN exist only on the ESP32; their code is type-checked (test_typecheck.py)."""

from __future__ import annotations

from pathlib import Path

from tests.firmware.conftest import FIRMWARE, run_micropython
from tests.firmware.test_modem import HEALTHY, MP_SUPPORT

PROGRAM = """
import asyncio, sys, time
from loa import link
from loa.hal.sim import SimBoard
from scripted_port import ScriptedPort
# Shortened so that a hung modem is found in a fraction of a second rather than minutes: set on
# the AT layer (loa/modem.py) before each link-up, since the link loads it for the link-up only.
tuning = {{"AT_TIMEOUT_MS": 100, "REGISTER_TIMEOUT_MS": 300, "REGISTER_POLL_MS": 20, "CFUN_TIMEOUT_MS": 100,
          "GUARD_MS": 50}}
script = {healthy}
after_power = {{}}   # what the modem answers after a power cycle
after_cfun = {{}}    # ... and after a radio reset
{changes}
class Port(ScriptedPort):
    times = []   # ticks_ms of each write
    def write(self, data):
        self.times.append(time.ticks_ms())
        super().write(data)
        if data == b"AT+CFUN=1\\r" and script.get("AT+CFUN=1"):
            script.update(after_cfun)
    def power_cycle(self):
        print("power cycle")
        script.update(after_power)
port = Port(script)
board = SimBoard({{"link": "ppp", "apn": "v-internet", "sim_pin": ""}})
board.modem = port
lnk = board.link_layer()
lnk.on_event = lambda kind, detail: print("event", kind, detail)
async def attempt():
    if not board.link_is_up():
        from loa import modem  # the link's import finds it loaded, and lets it go after
        for name in tuning:
            setattr(modem, name, tuning[name])
        del modem
    try:
        await board.link_up()
        print("up", board.link_is_up(), board.signal_csq())
    except OSError as exc:
        print("down", exc)
async def main():
{body}
asyncio.run(main())
print("done")
"""


def run_link(tmp_path: Path, body: str, changes: str = "", *, exits: bool = False) -> list[str]:
    program = PROGRAM.format(healthy=HEALTHY, changes=changes, body=body)
    result = run_micropython(program, tmp_path, paths=(str(FIRMWARE), MP_SUPPORT), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith(("modem:", "link:"))]
    assert (lines[-1] == "done") is not exits, result.stdout
    return lines


def test_the_config_chooses_the_link(tmp_path: Path) -> None:
    script = """
import asyncio
from loa import link
from loa.hal.sim import SimBoard
for kind in ("ppp", "wifi", "host", "none", "anything"):
    print(kind, link.make({"link": kind}, None).name)
# The simulated board without a modem uses the host's network whatever the config says.
board = SimBoard({"link": "ppp"})
print("sim", board.link_layer().name, board.signal_csq())
async def main():
    print("host up", await board.link_up(), board.link_is_up())
    try:
        await link.make({"link": "wifi", "wifi_ssid": "bench", "wifi_password": "x"}, None).up()
    except OSError as exc:
        print("wifi", exc)
asyncio.run(main())
"""
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ppp ppp", "wifi wifi", "host host", "none host", "anything host",
        "sim host 20", "host up True True", "wifi wifi: this board has no Wi-Fi"]


def test_ppp_comes_up_through_the_modem_and_reports_its_signal(tmp_path: Path) -> None:
    lines = run_link(tmp_path, """
    print("before", board.link_is_up(), board.signal_csq())
    await attempt()
    await attempt()   # already up: nothing is sent
    print("sent", port.sent)
    print("AT layer held", "loa.modem" in sys.modules)
    await board.link_down()
    print("after down", board.link_is_up())
""")
    assert lines[:3] == ["before False 20", "up True 17", "up True 17"]
    assert lines[3] == ("sent ['AT', 'ATE0', 'AT+CPIN?', 'AT+CEREG?', 'AT+CGDCONT=1,\"IP\",\"v-internet\"', "
                        "'AT+CSQ', 'AT+CCLK?', 'ATD*99#']")
    assert lines[4] == "AT layer held False"  # loaded for the link-up only (loa/ppp.py)
    assert lines[5] == "after down False"


def test_no_sim_fails_the_link_without_resetting_anything(tmp_path: Path) -> None:
    lines = run_link(tmp_path, """
    for _ in range(4):
        await attempt()
    print("power cycles", board.power_cycles)
""", 'script["AT+CPIN?"] = ["+CME ERROR: 10"]')
    assert lines[:4] == ["down ppp: no SIM (+CME ERROR 10)"] * 4
    assert lines[4] == "power cycles 0"


def test_a_link_up_without_heap_for_the_at_layer_resets_the_board_the_third_time(tmp_path: Path) -> None:
    lines = run_link(tmp_path, """
    import loa
    async def link_up(link):
        raise MemoryError
    class NoHeap:  # the AT layer as an import finds it in a heap too cut up for it
        pass
    for _ in range(3):
        loa.modem = NoHeap()
        loa.modem.link_up = link_up
        await attempt()
""", exits=True)
    # On the unix port the simulated reset exits.
    assert lines == ["down ppp: no heap for the modem's AT layer"] * 2
