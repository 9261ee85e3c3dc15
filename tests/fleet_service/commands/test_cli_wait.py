"""``loa commands send`` does not wait for ever on a receiver that never gives its outcome (it
went offline after it accepted): after ``--wait`` seconds it says whom it still waits for."""

from __future__ import annotations

import time

from tests.fleet_service.commands.test_cli import ServedApi, api_ready, loa_cli
from tests.support.waiting import wait_until


async def test_send_stops_waiting_and_names_the_receivers_still_awaited(fleet, receiver):
    token = fleet.admin["Authorization"].split()[1]
    silent = receiver("x-1", answer=lambda _cmd: [("accepted", None)])  # never done nor failed
    with ServedApi(fleet) as url:
        await wait_until(lambda: api_ready(url), timeout=10)
        async with silent.online():
            await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-1"), timeout=10)
            started = time.monotonic()
            result = await loa_cli("commands", "send", "play", "--receiver", "x-1", "--url",
                                   "http://127.0.0.1:9/a.mp3", "--wait", "2", "--api", url, "--token", token)
            took = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert took < 8, took
    assert "after 2 s still waiting for 1 receivers" in result.output and "Sau 2 giây còn chờ 1" in result.output
    assert "x-1" in result.output and "accepted, no outcome yet" in result.output
    assert "loa commands show" in result.output and "--watch" in result.output
