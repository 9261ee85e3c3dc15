"""The stream player (firmware/loa/player.py) on the real micropython interpreter with a 160 KiB
heap and the simulated board (whose decoder consumes audio at the stream's bitrate in real
time), against a real HTTP server sending real MP3 paced at its bitrate
(tests/support/stream_server.py)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.firmware.conftest import FIRMWARE, HEAPSIZE, MICROPYTHON, micropython_env, run_micropython, wait_for
from tests.support.ports import free_port
from tests.support.stream_server import StreamServer

PRELUDE = """
import asyncio, gc, time
from loa.hal.sim import SimBoard
from loa.player import Player, PlayerError
board = SimBoard({})
player = Player(board, log=lambda *a: None)
ends = []
player.on_end = ends.append
def now():
    return time.ticks_ms() / 1000
async def watch(seconds, seen=None):
    # Poll the state for ``seconds``; the states seen go into ``seen``.
    end = time.ticks_add(time.ticks_ms(), int(seconds * 1000))
    while time.ticks_diff(end, time.ticks_ms()) > 0:
        if seen is not None and player.state not in seen:
            seen.append(player.state)
        await asyncio.sleep_ms(20)
async def main():
"""


def run_player(tmp_path: Path, body: str, timeout: float = 60.0) -> dict[str, str]:
    """Run ``body`` (indented into ``async def main()``); its ``print("key", value)`` lines
    come back as a dict."""
    script = PRELUDE + body + "\nasyncio.run(main())\nprint('done')\n"
    result = run_micropython(script, tmp_path, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith("done\n"), result.stdout
    return {k: v for k, _, v in (line.partition(" ") for line in result.stdout.splitlines())}


@pytest.mark.parametrize("kbps", [64, 128])  # MPEG-2 at 22.05 kHz and MPEG-1 at 44.1 kHz
def test_plays_at_the_stream_rate_with_the_frame_bitrate(tmp_path: Path, kbps: int) -> None:
    with StreamServer(kbps) as server:
        out = run_player(tmp_path, f"""
    t = now()
    await player.play({server.url()!r})
    print("started_s", now() - t)
    print("state", player.state)
    print("kbps", player.kbps)
    print("amp", board.amp_state())
    await watch(2)
    b0, a0, t0 = player.bytes, board.audio_bytes, now()
    await watch(5)
    print("net_rate", (player.bytes - b0) / (now() - t0))
    print("play_rate", (board.audio_bytes - a0) / (now() - t0))
    print("underruns", player.underruns)
    print("url", player.url)
    await player.stop()
    print("stopped", player.state, board.amp_state(), player.url, ends)
""")
    assert out["state"] == "playing" and out["amp"] == "on"
    assert int(out["kbps"]) == kbps
    assert float(out["started_s"]) < 3
    expected = kbps * 1000 / 8
    assert 0.85 * expected < float(out["net_rate"]) < 1.15 * expected, out
    assert 0.85 * expected < float(out["play_rate"]) < 1.15 * expected, out
    assert out["underruns"] == "0"
    assert out["url"] == server.url()
    assert out["stopped"] == "idle off None []"


def test_a_stream_slower_than_its_bitrate_underruns_and_buffers(tmp_path: Path) -> None:
    with StreamServer(64) as server:
        out = run_player(tmp_path, f"""
    await player.play({server.url("/slow.mp3")!r})
    seen = []
    await watch(10, seen)
    print("seen", seen)
    print("underruns", player.underruns)
    print("starved", board.audio_starved)
    await player.stop()
""")
    assert "'buffering'" in out["seen"] and "'playing'" in out["seen"]
    # Half the bitrate with a 0.5 s refill: roughly one underrun a second once the burst is gone.
    assert 2 <= int(out["underruns"]) <= 20, out
    assert int(out["starved"]) >= 1


def test_unreachable_refused_and_looping_streams_raise_stream_unreachable(tmp_path: Path) -> None:
    closed = free_port()
    with StreamServer(64) as server:
        loop = "/redirect?to=" + quote("/redirect?to=" + quote("/redirect?to=" + quote("/redirect?to=/live.mp3", safe=""), safe=""), safe="")
        script = PRELUDE + f"""
    for url in ({f"http://127.0.0.1:{closed}/live.mp3"!r}, {server.url("/missing.mp3")!r}, "ftp://x/y.mp3", {server.url(loop)!r}):
        try:
            await player.play(url, timeout_s=5)
            print("played", url)
        except PlayerError as exc:
            print("refused", exc.reason, player.state, board.amp_state(), exc)
asyncio.run(main())
"""
        result = run_micropython(script, tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all(line.startswith("refused stream_unreachable error off") for line in lines), lines
    assert "HTTP 404" in lines[1] and "not an http(s) URL" in lines[2] and "more than 3 redirects" in lines[3]


@pytest.mark.parametrize(("path", "why", "length_s"), [
    ("/short.mp3?seconds=3", "ended", 3),                       # Content-Length, all of it
    ("/short.mp3?seconds=3&chunked=1", "ended", 3),             # chunked, with the last chunk
    ("/short.mp3?seconds=4&cut=1", "stream_error", 2),          # closed before Content-Length
    ("/short.mp3?seconds=4&chunked=1&cut=1", "stream_error", 2),  # closed before the last chunk
])
def test_the_stream_ending_by_itself_is_reported(tmp_path: Path, path: str, why: str, length_s: int) -> None:
    with StreamServer(64) as server:
        url = server.url("/redirect?to=" + quote(path, safe=""))  # through a redirect, too
        out = run_player(tmp_path, f"""
    await player.play({url!r})
    print("state", player.state)
    t = now()
    while not ends and now() - t < 15:
        await asyncio.sleep_ms(50)
    print("ends", ends)
    print("after", player.state, board.amp_state(), player.url)
    print("bytes", player.bytes)
    print("played", board.audio_bytes)
""")
        requests = server.requests
    assert out["state"] == "playing"
    assert out["ends"] == f"['{why}']"
    assert out["after"] == ("idle" if why == "ended" else "error") + " off None"
    assert int(out["bytes"]) == length_s * 8000
    assert int(out["played"]) == length_s * 8000  # what was received was played out first
    assert requests == 2


def test_a_live_stream_closed_by_the_server_ends(tmp_path: Path) -> None:
    with StreamServer(64) as server:
        script = PRELUDE + f"""
    await player.play({server.url()!r})
    print("playing", player.state)
    t = now()
    while not ends and now() - t < 20:
        await asyncio.sleep_ms(50)
    print("ends", ends, player.state, board.amp_state())
asyncio.run(main())
"""
        process = subprocess.Popen([MICROPYTHON, "-X", f"heapsize={HEAPSIZE}", "-c", script], cwd=tmp_path,
                                   env=micropython_env(str(FIRMWARE)), stdout=subprocess.PIPE, text=True)
        lines: list[str] = []
        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: any(line.startswith("playing") for line in lines), 20, "playing")
        time.sleep(1)
        server.drop_clients()
        process.wait(30)
        reader.join(5)
    assert lines[0].strip() == "playing playing"
    assert lines[1].strip() == "ends ['ended'] idle off"


def test_memory_stays_bounded_over_a_long_stream(tmp_path: Path) -> None:
    with StreamServer(128) as server:
        out = run_player(tmp_path, f"""
    gc.collect()
    before = gc.mem_free()
    await player.play({server.url()!r})
    frees = []
    for _ in range(8):
        await watch(2)
        gc.collect()
        frees.append(gc.mem_free())
    print("before", before)
    print("frees", frees)
    print("min", min(frees))
    print("drift", frees[2] - frees[-1])
    print("state", player.state, player.underruns)
    print("bytes", player.bytes)
    await player.stop()
""", timeout=90)
    assert out["state"] == "playing 0"
    assert int(out["bytes"]) > 14 * 16000
    # The ring is allocated with the player: streaming itself only churns small objects.
    assert int(out["min"]) > 64 * 1024, out
    assert abs(int(out["drift"])) < 2048, out


def test_stream_errors_are_raised_once_per_failure_with_the_simulators_detail(tmp_path: Path) -> None:
    # The application (loa/app.py) over the player, without a broker: its event queue is
    # what would be published. Commanded plays and slots, failing to open and breaking
    # mid-play (the server closes halfway); a slot's retries that fail are the same failure.
    (tmp_path / "config.json").write_text(json.dumps({"id": "rx-s", "password": "p", "host": "127.0.0.1"}))
    with StreamServer(64) as server:
        dead = f"http://127.0.0.1:{free_port()}/gone.mp3"
        cut = server.url("/short.mp3?seconds=2&cut=1")
        script = f"""
import asyncio, json
from loa import app, commands, config
from loa.hal.sim import SimBoard
from loa.state import State
app.SLOT_RETRY_S = 0
cfg = config.load()
rx = app.Receiver(SimBoard(cfg), cfg, State(), log=lambda *a: None)
def cmd(**fields):
    fields.update(v=1, ts=0, exp=2000000000)
    return commands.decode(json.dumps(fields).encode())
def slot(sid, url):
    return [{{"id": sid, "s": "00:00:00", "e": "23:59:59", "d": 127, "u": url}}]
async def until_ended():
    for _ in range(100):
        if rx.ended:
            break
        await asyncio.sleep_ms(50)
    rx._check_end()
async def main():
    await rx._command(cmd(id="c1", op="play", url={dead!r}))
    await rx._command(cmd(id="c2", op="play", url={cut!r}))
    await until_ended()
    now = rx.clock.unix_ms()
    rx.clock.correct(now, rx.board.uptime_ms(), now, "ntp")
    await rx._command(cmd(id="s1", op="schedule", ver=1, tz=0, slots=slot("m1", {dead!r})))
    for _ in range(3):
        await rx._run_schedule()   # fails, then tried again at once (SLOT_RETRY_S 0)
    await rx._command(cmd(id="s2", op="schedule", ver=2, tz=0, slots=slot("m2", {cut!r})))
    await rx._run_schedule()
    await until_ended()
    rx.schedule.urls[0] = {dead!r}   # the retries after the break fail to open
    for _ in range(2):
        await rx._run_schedule()
    for event in rx.events:
        print(event[1], event[2])
asyncio.run(main())
"""
        # Compiling app.py from source takes more heap than the receiver has (it runs .mpy).
        result = run_micropython(script, tmp_path, timeout=60, heapsize="512k")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "stream_error cmd:c1",
        "play_started cmd:c2", "stream_error cmd:c2", "play_stopped stream_error:c2",
        "stream_error sched:m1",
        "play_started sched:m2", "stream_error sched:m2", "play_stopped stream_error:m2",
    ]
