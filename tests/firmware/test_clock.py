"""The receiver's clock (firmware/loa/clock.py) on the real micropython interpreter against a
real NTP server (chronyd on a loopback port, tests/firmware/conftest.py). The board's clock is
skewed at the hardware seam: a SimBoard whose RTC reads the host's time plus a skew."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.firmware.conftest import NtpServer, run_micropython, sntp_time

SKEW_LIMIT = 2**31 - 1

SKEWED_BOARD = """
import asyncio, time
from loa.clock import Clock
from loa.hal.sim import SimBoard

class SkewedBoard(SimBoard):
    # The board's RTC, {skew_ms} ms off (an ESP32 after power-on is decades off).
    def unix_time_ms(self):
        return time.time_ns() // 1000000 + {skew_ms}
    def unix_time(self):
        return self.unix_time_ms() // 1000

board = SkewedBoard({{}})
clock = Clock(board)
"""


def run_clock(tmp_path: Path, skew_ms: int, body: str) -> dict[str, str]:
    script = SKEWED_BOARD.format(skew_ms=skew_ms) + body
    result = run_micropython(script, tmp_path, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return {k: v for k, _, v in (line.partition(" ") for line in result.stdout.splitlines())}


@pytest.mark.parametrize("skew_ms", [0, 3_600_000, -90_500, -1_700_000_000_000])
def test_sntp_measures_the_skew_and_corrects_the_clock(tmp_path: Path, ntp_server: NtpServer, skew_ms: int) -> None:
    out = run_clock(tmp_path, skew_ms, f"""
print("synced_before", clock.synced)
print("before", clock.unix_ms())
skew = asyncio.run(clock.sync_ntp({ntp_server.host!r}, {ntp_server.port}))
print("skew", skew)
print("source", clock.source)
print("after", clock.unix_ms())
print("raw", board.unix_time_ms())
print("since", clock.since_sync())
""")
    reference = sntp_time(ntp_server.host, ntp_server.port) * 1000
    assert out["synced_before"] == "False"
    assert abs(int(out["before"]) - (reference + skew_ms)) < 2000  # unsynced: the board's clock
    # Measured to a few ms on loopback; reported within the telemetry field's 32 bits.
    assert abs(int(out["skew"]) - max(-SKEW_LIMIT, min(SKEW_LIMIT, skew_ms))) < 50
    assert abs(int(out["after"]) - reference) < 1000                 # corrected
    assert abs(int(out["raw"]) - (reference + skew_ms)) < 2000       # the board's RTC is left alone
    assert out["source"] == "ntp" and out["since"] == "0"


def test_the_corrected_clock_keeps_running_from_the_sync(tmp_path: Path, ntp_server: NtpServer) -> None:
    out = run_clock(tmp_path, 250_000, f"""
asyncio.run(clock.sync_ntp({ntp_server.host!r}, {ntp_server.port}))
time.sleep(2.2)
print("now", clock.unix_ms())
print("since", clock.since_sync())
""")
    assert abs(int(out["now"]) - sntp_time(ntp_server.host, ntp_server.port) * 1000) < 1000
    assert out["since"] == "2"


@pytest.fixture
def bad_ntp() -> Iterator[tuple[int, list[str]]]:
    """A UDP server on loopback that answers every request wrongly in turn: another
    request's originate, a kiss-o'-death (stratum 0), an unsynchronized server (LI 3), a
    short packet. (chronyd cannot be made to answer like that.)"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    sent: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        kinds = ["wrong_originate", "kiss_of_death", "unsynchronized", "short"]
        while not stop.is_set():
            try:
                request, peer = sock.recvfrom(128)
            except OSError:
                continue
            kind = kinds[len(sent) % len(kinds)]
            now = time.time() + 2208988800
            stamp = int(now).to_bytes(4, "big") + int((now % 1) * 2**32).to_bytes(4, "big")
            answer = bytearray(48)
            answer[0] = 0x24  # LI 0, version 4, mode 4 (server)
            answer[1] = 2
            answer[24:32] = request[40:48]
            answer[32:40] = answer[40:48] = stamp
            if kind == "wrong_originate":
                answer[24] ^= 0xFF
            elif kind == "kiss_of_death":
                answer[1] = 0
            elif kind == "unsynchronized":
                answer[0] = 0xE4
            elif kind == "short":
                answer = answer[:40]
            sent.append(kind)
            sock.sendto(bytes(answer), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], sent
    stop.set()
    thread.join(2)
    sock.close()


def test_answers_that_do_not_belong_to_the_request_are_ignored(tmp_path: Path, bad_ntp: tuple[int, list[str]]) -> None:
    port, sent = bad_ntp
    out = run_clock(tmp_path, 5000, f"""
try:
    asyncio.run(clock.sync_ntp("127.0.0.1", {port}))
    print("result synced")
except OSError as exc:
    print("result", exc)
print("synced", clock.synced)
""")
    assert out["result"].startswith("sntp 127.0.0.1: no valid answer"), out
    assert out["synced"] == "False"
    assert sent[:3] == ["wrong_originate", "kiss_of_death", "unsynchronized"]  # one per try


def test_no_server_fails_fast_and_the_modem_time_is_the_fallback(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    out = run_clock(tmp_path, -7_200_000, f"""
t = time.ticks_ms()
try:
    asyncio.run(clock.sync_ntp("127.0.0.1", {closed_port}))
except OSError as exc:
    print("failed_ms", time.ticks_diff(time.ticks_ms(), t))
print("without_modem", clock.sync_modem())
board.network_time = lambda: int(time.time())  # AT+CCLK?: whole seconds
print("skew", clock.sync_modem())
print("source", clock.source)
print("now", clock.unix_ms())
""")
    assert int(out["failed_ms"]) < 2000  # refused at once, not a timeout per try
    assert out["without_modem"] == "None"
    assert abs(int(out["skew"]) + 7_200_000) <= 1500  # whole seconds from the modem
    assert out["source"] == "modem"
    assert abs(int(out["now"]) - time.time() * 1000) < 1500
