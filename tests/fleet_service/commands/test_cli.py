"""``loa commands`` against a running service over HTTP: send with the live view, show, list,
and errors in both languages."""

from __future__ import annotations

import asyncio
import threading

import uvicorn
from typer.testing import CliRunner

from fleet_service.app import create_app
from fleet_service.cli import app as loa
from tests.fleet_service.commands.conftest import Fleet
from tests.support.ports import free_port
from tests.support.waiting import wait_until


class ServedApi:
    def __init__(self, fleet: Fleet) -> None:
        app = create_app(runtime=fleet.runtime, mqtt=False)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def loa_cli(*args: str):  # type: ignore[no-untyped-def]
    # In a thread: the test's loop must go on running the service's MQTT side meanwhile.
    return await asyncio.to_thread(CliRunner().invoke, loa, list(args))


async def test_send_follows_the_command_until_every_receiver_answered(fleet, receiver):
    token = fleet.admin["Authorization"].split()[1]
    x1 = receiver("x-1", answer=lambda _cmd: [("accepted", None), ("done", None)])
    x2 = receiver("x-2", answer=lambda _cmd: [("rejected", "lower_priority")])
    with ServedApi(fleet) as url:
        await wait_until(lambda: api_ready(url), timeout=10)
        async with x1.online(), x2.online():
            await wait_until(lambda: fleet.runtime.ingest.tracker.is_online("x-2"), timeout=10)
            result = await loa_cli("commands", "send", "play", "--station", str(fleet.ids["sx"]),
                                   "--url", "http://127.0.0.1:9/a.mp3", "--api", url, "--token", token)
        assert result.exit_code == 0, result.output
        assert "2/2 có kết quả / answered" in result.output
        assert "xong / done: 1" in result.output and "từ chối / rejected: 1" in result.output
        assert "x-2" in result.output and "Đang phát bản tin ưu tiên cao hơn" in result.output
        command_id = result.output.split()[3].rstrip(":")
        shown = await loa_cli("commands", "show", command_id, "--api", url, "--token", token)
        assert shown.exit_code == 0 and "x-1" in shown.output and "xong / done" in shown.output
        listed = await loa_cli("commands", "list", "--api", url, "--token", token)
        assert command_id in listed.output and "admin" in listed.output
        refused = await loa_cli("commands", "send", "volume", "--receiver", "x-1", "--volume", "150",
                                "--api", url, "--token", token)
        assert refused.exit_code == 1 and "không hợp lệ" in refused.output and "volume" in refused.output
        bad_token = await loa_cli("commands", "list", "--api", url, "--token", "wrong")
        assert bad_token.exit_code == 1
    unreachable = await loa_cli("commands", "list", "--api", f"http://127.0.0.1:{free_port()}", "--token", token)
    assert unreachable.exit_code == 2 and "Không kết nối được" in unreachable.output


def api_ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/docs", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
