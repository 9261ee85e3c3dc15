"""The modem's AT layer against a scripted serial port (tests/firmware/mp/scripted_port.py),
run by the real micropython interpreter."""

from __future__ import annotations

import calendar
from pathlib import Path

import pytest

from tests.firmware.conftest import FIRMWARE, run_micropython

MP_SUPPORT = str(Path(__file__).resolve().parent / "mp")

HEALTHY = """{
    "AT": ["OK"], "ATE0": ["OK"],
    "AT+CPIN?": ["+CPIN: READY", "OK"],
    "AT+CEREG?": ["+CEREG: 0,1", "OK"],
    "AT+CREG?": ["+CREG: 0,1", "OK"],
    'AT+CGDCONT=1,"IP","v-internet"': ["OK"],
    "AT+CSQ": ["+CSQ: 17,99", "OK"],
    "AT+CCLK?": ['+CCLK: "24/05/06,13:45:10+28"', "OK"],
    "ATD*99#": ["CONNECT 150000000"],
    "+++": ["OK"], "ATH": ["OK"],
}"""
# 2024-05-06 13:45:10 at UTC+7 (+28 quarter hours) is 06:45:10 UTC.
CCLK_UNIX = calendar.timegm((2024, 5, 6, 6, 45, 10))


def run_modem(tmp_path: Path, body: str, script_changes: str = "") -> str:
    program = f"""
import asyncio
from loa import modem
from scripted_port import ScriptedPort
script = {HEALTHY}
{script_changes}
port = ScriptedPort(script)
m = modem.Modem(port, timeout_ms=300, log=lambda *a: None)
async def main():
{body}
asyncio.run(main())
print("done")
"""
    result = run_micropython(program, tmp_path, paths=(str(FIRMWARE), MP_SUPPORT))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("done\n")
    return result.stdout


def test_attach_brings_the_modem_to_ppp_and_reads_the_signal(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    csq = await m.attach("v-internet")
    print("csq", csq, modem.csq_to_dbm(csq))
    await m.dial()
    print("sent", port.sent)
""")
    assert "csq 17 -79" in out
    assert "'AT', 'ATE0', 'AT+CPIN?', 'AT+CEREG?', 'AT+CGDCONT=1,\"IP\",\"v-internet\"', 'AT+CSQ', 'ATD*99#'" in out


@pytest.mark.parametrize(("answer", "expected"), [
    ('["+CSQ: 31,99", "OK"]', "31 -51"),
    ('["+CSQ: 0,0", "OK"]', "0 -113"),
    ('["+CSQ: 99,99", "OK"]', "99 None"),
    ('["+CSQ: 45,0", "OK"]', "99 None"),    # out of range: unknown
    ('["+CSQ: garbage", "OK"]', "99 None"),
    ('["OK"]', "99 None"),                   # no +CSQ line
])
def test_csq_parse(tmp_path: Path, answer: str, expected: str) -> None:
    out = run_modem(tmp_path, """
    csq = await m.signal()
    print("csq", csq, modem.csq_to_dbm(csq))
""", f'script["AT+CSQ"] = {answer}')
    assert f"csq {expected}" in out


def test_error_and_cme_error_raise_with_their_code(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    for cmd in ("AT+BAD", "AT+CME"):
        try:
            await m.command(cmd)
        except modem.AtError as exc:
            print("error", cmd, exc.code)
""", 'script["AT+CME"] = ["+CME ERROR: 30"]')
    assert "error AT+BAD None" in out and "error AT+CME 30" in out


def test_a_silent_modem_times_out_and_a_late_one_is_waited_for(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    try:
        await m.command("AT+SILENT")
    except modem.AtTimeout as exc:
        print("timeout", exc)
    await m.sync()   # answers only on the third AT (booting)
    print("synced after", port.sent.count("AT"))
""", 'script["AT+SILENT"] = None\nscript["AT"] = [None, None, ["OK"]]')
    assert "timeout AT+SILENT: no answer" in out
    assert "synced after 3" in out


def test_a_modem_that_never_answers_is_reported_hung(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    try:
        await m.sync(tries=3)
    except modem.AtTimeout:
        print("hung after", len(port.sent))
""", 'script["AT"] = None')
    assert "hung after 3" in out


def test_no_sim_and_a_locked_sim(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    try:
        await m.attach("v-internet")
    except modem.NoSim as exc:
        print("nosim", exc)
    script["AT+CPIN?"] = ["+CPIN: SIM PIN", "OK"]
    try:
        await m.sim_ready()
    except modem.SimLocked as exc:
        print("locked", exc)
    script['AT+CPIN="1234"'] = ["OK"]
    await m.sim_ready("1234")
    print("unlocked")
""", 'script["AT+CPIN?"] = ["+CME ERROR: 10"]')
    assert "nosim no SIM (+CME ERROR 10)" in out
    assert "locked SIM not ready: SIM PIN" in out and "unlocked" in out


def test_registration_searching_then_registered_denied_and_never(tmp_path: Path) -> None:
    out = run_modem(tmp_path, """
    print("stat", await m.wait_registered(5000, poll_ms=10), "after", port.sent.count("AT+CEREG?"))
    script["AT+CEREG?"] = ["+CEREG: 0,3", "OK"]
    script["AT+CREG?"] = ["+CREG: 0,3", "OK"]
    try:
        await m.wait_registered(5000, poll_ms=10)
    except modem.NotRegistered as exc:
        print("refused", exc)
    script["AT+CEREG?"] = ["+CEREG: 0,2", "OK"]
    script["AT+CREG?"] = ["+CREG: 0,0", "OK"]
    try:
        await m.wait_registered(100, poll_ms=10)
    except modem.NotRegistered as exc:
        print("gave up", exc)
""", 'script["AT+CEREG?"] = [["+CEREG: 0,2", "OK"], ["+CEREG: 0,2", "OK"], ["+CEREG: 2,5,\\"1A2B\\",\\"01C2D3E4\\",7", "OK"]]\n'
     'script["AT+CREG?"] = ["+CREG: 0,2", "OK"]')
    assert "stat 5 after 3" in out
    assert "refused not registered: denied" in out
    assert "gave up not registered: searching" in out


def test_network_time_from_cclk(tmp_path: Path) -> None:
    # One answer per query: UTC+7, UTC-3:30, no offset, the defaults of a modem without network
    # time (years 1970 and 1980 as two-digit years), out-of-range fields, garbage, ERROR.
    out = run_modem(tmp_path, """
    for _ in range(8):
        print("t", await m.network_time())
""", """script["AT+CCLK?"] = [['+CCLK: "24/05/06,13:45:10+28"', "OK"], ['+CCLK: "24/05/06,03:15:10-14"', "OK"],
    ['+CCLK: "24/05/06,06:45:10"', "OK"], ['+CCLK: "70/01/01,00:00:05+00"', "OK"],
    ['+CCLK: "80/01/06,00:01:00+28"', "OK"], ['+CCLK: "24/13/06,06:45:10+00"', "OK"],
    ['+CCLK: "garbage"', "OK"], ["ERROR"]]""")
    assert [line.split()[1] for line in out.splitlines() if line.startswith("t ")] == (
        [str(CCLK_UNIX)] * 3 + ["None"] * 5)


# -- the link's view of the modem: PPP drops and a hung modem's recovery ladder ----------------
# (run through loa.ppp.PppLink on the simulated board; the runner is in test_link.py)

HUNG = 'for cmd in list(script) + ["AT+CFUN=0", "AT+CFUN=1"]:\n    script[cmd] = None'


def test_a_dropped_ppp_session_escapes_to_command_mode_then_dials_again(tmp_path: Path) -> None:
    from tests.firmware.test_link import run_link

    lines = run_link(tmp_path, """
    await attempt()
    print("time", lnk.network_time() - {CCLK_UNIX})
    await asyncio.sleep_ms(1100)
    print("later", lnk.network_time() - {CCLK_UNIX})
    board.ppp_carrier = False   # PPP died; the modem may still be in data mode
    print("is up", board.link_is_up())
    n = len(port.sent)
    await attempt()
    i = port.sent.index("+++")
    print("after drop", port.sent[n:n + 3])
    print("guards", time.ticks_diff(port.times[i], port.times[i - 1]) >= 50,
          time.ticks_diff(port.times[i + 1], port.times[i]) >= 50)
    # In command mode already (NO CARRIER came): "+++" gets no OK, AT answers.
    script["+++"] = None
    board.ppp_carrier = False
    n = len(port.sent)
    await attempt()
    print("no OK", port.sent[n:n + 4])
    print("dials", port.sent.count("ATD*99#"))
""".replace("{CCLK_UNIX}", str(CCLK_UNIX)))
    assert lines == [
        "up True 17", "time 0", "later 1", "is up False", "up True 17",
        "after drop ['+++', 'ATH', 'AT']", "guards True True",
        "up True 17", "no OK ['+++', 'AT', 'ATH', 'AT']", "dials 3", "done"]


def test_a_modem_silent_after_the_escape_goes_to_the_recovery_ladder(tmp_path: Path) -> None:
    from tests.firmware.test_link import run_link

    lines = run_link(tmp_path, """
    await attempt()
    for cmd in list(script) + ["AT+CFUN=0", "AT+CFUN=1"]:
        script[cmd] = None
    board.ppp_carrier = False
    await attempt()
    print("sent", port.sent[-4:])
""")
    assert lines == ["up True 17", "event modem_reset radio:at_timeout", "down ppp: modem silent: AT: no answer",
                     "sent ['ATD*99#', '+++', 'AT', 'AT+CFUN=0']", "done"]


def test_a_hung_modem_climbs_the_recovery_ladder_in_order(tmp_path: Path) -> None:
    from tests.firmware.test_link import run_link

    lines = run_link(tmp_path, """
    for _ in range(3):
        await attempt()
        print("power cycles", board.power_cycles)
""", HUNG, exits=True)
    # Radio reset (unanswered), power cycle (the modem stays silent), then the board reset
    # ends the process: on the unix port the simulated reset exits.
    assert lines == [
        "event modem_reset radio:at_timeout", "down ppp: modem silent: AT: no answer", "power cycles 0",
        "event modem_reset power:at_timeout", "power cycle", "down ppp: modem silent: AT: no answer", "power cycles 1",
        "event modem_reset board:at_timeout",
    ]


def test_a_power_cycle_that_helps_starts_the_ladder_again(tmp_path: Path) -> None:
    from tests.firmware.test_link import run_link

    lines = run_link(tmp_path, """
    healthy = dict(script)
    after_power.update(healthy)
    for cmd in list(script) + ["AT+CFUN=0", "AT+CFUN=1"]:
        script[cmd] = None
    for _ in range(3):
        await attempt()
    # Hung again later: the ladder starts at the radio reset, not at the board reset.
    board.ppp_carrier = False
    for cmd in list(script):
        script[cmd] = None
    await attempt()
""")
    assert lines == [
        "event modem_reset radio:at_timeout", "down ppp: modem silent: AT: no answer",
        "event modem_reset power:at_timeout", "power cycle", "down ppp: modem silent: AT: no answer",
        "up True 17",
        "event modem_reset radio:at_timeout", "down ppp: modem silent: AT: no answer",
        "done",
    ]


def test_no_registration_for_too_long_resets_the_radio(tmp_path: Path) -> None:
    from tests.firmware.test_link import run_link

    lines = run_link(tmp_path, """
    tuning["UNREGISTERED_MS"] = 500
    await attempt()            # searching: not yet a reason to reset anything
    await asyncio.sleep_ms(300)
    await attempt()            # searching for longer than UNREGISTERED_MS: radio reset
    await attempt()            # registered after the radio reset
    print("sent", [c for c in port.sent if c.startswith("AT+CFUN")])
""", 'script["AT+CEREG?"] = ["+CEREG: 0,2", "OK"]\nscript["AT+CREG?"] = ["+CREG: 0,2", "OK"]\n'
     'script["AT+CFUN=0"] = ["OK"]\nscript["AT+CFUN=1"] = ["OK"]\n'
     'after_cfun["AT+CEREG?"] = ["+CEREG: 0,1", "OK"]')
    assert lines == [
        "down ppp: not registered: searching",
        "event modem_reset radio:not_registered", "down ppp: not registered: searching",
        "up True 17",
        "sent ['AT+CFUN=0', 'AT+CFUN=1']",
        "done",
    ]
