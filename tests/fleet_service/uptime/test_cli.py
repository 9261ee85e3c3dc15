"""``loa availability`` and ``loa status`` ask the running service (LOA_API_URL, LOA_API_TOKEN),
see only the caller's region, say plainly what went wrong, and never create a database file."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.cli import app
from fleet_service.config import Settings, get_settings
from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.runtime import Runtime
from fleet_service.uptime.models import Connectivity, TransitionCause
from fleet_service.uptime.service import record_transitions
from fleet_service.uptime.tracker import Transition
from tests.fleet_service.uptime.test_endpoints import at
from tests.support.ports import free_port

# 07:00-08:00 Vietnam time = 00:00-01:00 UTC: x-1 down 00:30-00:45, 75 %.
WINDOW = ["--from", "2026-07-01T07:00:00", "--to", "2026-07-01T08:00:00"]


@dataclass
class Served:
    url: str
    admin: str      # token of an admin
    operator: str   # token of the operator of commune X
    ids: dict[str, int]


@pytest.fixture
def served(sqlite_url: str) -> Iterator[Served]:
    """The service's API on a free port over a ledger: x-1 (commune X) down once, x-2 (X) never
    seen, y-1 (commune Y) down since 00:20."""
    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    with session_scope(runtime.sessions) as s:
        district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
        x = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn", parent_id=district.id))
        y = registry.create_region(s, RegionCreate(name="Quân Chu", level="thị trấn", parent_id=district.id))
        sx = registry.create_station(s, StationCreate(region_id=x.id, name="Đài Hùng Sơn"))
        sy = registry.create_station(s, StationCreate(region_id=y.id, name="Đài Quân Chu"))
        for rid, station in (("x-1", sx.id), ("x-2", sx.id), ("y-1", sy.id)):
            registry.register_receiver(s, ReceiverCreate(id=rid, hardware_id=f"hw-{rid}", station_id=station))
        record_transitions(s, [
            Transition("x-1", Connectivity.ONLINE, at(0), TransitionCause.BIRTH, 1),
            Transition("x-1", Connectivity.OFFLINE, at(30), TransitionCause.WILL, 1),
            Transition("x-1", Connectivity.ONLINE, at(45), TransitionCause.BIRTH, 2),
            Transition("y-1", Connectivity.ONLINE, at(0), TransitionCause.BIRTH, 1),
            Transition("y-1", Connectivity.OFFLINE, at(20), TransitionCause.WILL, 1),
        ], {"x-1": sx.id, "y-1": sy.id})
        admin = auth.create_user(s, "admin", role="admin")
        operator = auth.create_user(s, "op.hungson", role="operator", region_id=x.id)
        tokens = [auth.issue_token(s, user.id, "cli")[1] for user in (admin, operator)]
        ids = {"district": district.id, "x": x.id, "y": y.id, "sx": sx.id, "sy": sy.id}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime=runtime, mqtt=False), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while not _ready(url):
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.05)
        yield Served(url, *tokens, ids)
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.close()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/docs", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def loa(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env=env)


def test_receiver_station_and_region_availability(served: Served):
    as_admin = ["--api", served.url, "--token", served.admin]
    for args in (["receiver", "x-1"], ["station", str(served.ids["sx"])], ["region", str(served.ids["x"])]):
        result = loa("availability", *args, *WINDOW, *as_admin)
        assert result.exit_code == 0, result.output
        assert "75.000 %" in result.output
        assert "Số lần mất kết nối / outages: 1" in result.output
        assert "00:15:00" in result.output  # the outage's length
        assert "01/07/2026 07:30:00" in result.output  # shown in Vietnam time
    station = loa("availability", "station", str(served.ids["sx"]), *WINDOW, *as_admin)
    assert "Đài / station" in station.output and "Đài Hùng Sơn" in station.output
    region = loa("availability", "region", str(served.ids["x"]), *WINDOW, *as_admin)
    assert "thị trấn Hùng Sơn" in region.output


def test_the_token_and_address_come_from_the_environment(served: Served):
    result = loa("availability", "receiver", "x-1", *WINDOW,
                 env={"LOA_API_URL": served.url, "LOA_API_TOKEN": served.admin})
    assert result.exit_code == 0, result.output
    assert "75.000 %" in result.output


def test_status_lists_who_is_down_since_when(served: Served):
    as_admin = ["--api", served.url, "--token", served.admin]
    result = loa("status", "--region", str(served.ids["x"]), *as_admin)
    assert result.exit_code == 0, result.output
    # x-1 came back online at 00:45; x-2 was never seen.
    assert "Hoạt động / online: 1   Mất kết nối / down: 0   Chưa thấy / never seen: 1" in result.output
    assert "x-1" not in result.output and "x-2" in result.output
    listed = loa("status", "--all", *as_admin)
    assert listed.exit_code == 0, listed.output
    assert "x-1" in listed.output and "01/07/2026 07:45:00" in listed.output
    assert "y-1" in listed.output and "MẤT KẾT NỐI / DOWN" in listed.output
    assert "01/07/2026 07:20:00" in listed.output


def test_an_operator_sees_only_their_commune(served: Served):
    as_operator = ["--api", served.url, "--token", served.operator]
    result = loa("status", "--all", *as_operator)
    assert result.exit_code == 0, result.output
    assert "x-1" in result.output and "x-2" in result.output and "y-1" not in result.output
    assert "Mất kết nối / down: 0" in result.output
    assert loa("availability", "receiver", "x-1", *WINDOW, *as_operator).exit_code == 0
    # Another commune's receiver, station and region are not found, as if they did not exist.
    for args in (["availability", "receiver", "y-1"], ["availability", "station", str(served.ids["sy"])],
                 ["availability", "region", str(served.ids["y"])], ["availability", "region", str(served.ids["district"])],
                 ["status", "--region", str(served.ids["y"])]):
        refused = loa(*args, *as_operator)
        assert refused.exit_code == 1, (args, refused.output)
        assert "Không tìm thấy" in refused.output and "not found" in refused.output, refused.output


def test_errors_say_what_is_wrong_in_both_languages(served: Served):
    no_token = loa("status", "--api", served.url, env={"LOA_API_TOKEN": ""})
    assert no_token.exit_code == 2
    assert "Cần mã truy cập" in no_token.output and "an API token is needed" in no_token.output
    wrong = loa("availability", "receiver", "x-1", "--api", served.url, "--token", "not-a-token")
    assert wrong.exit_code == 1
    assert "Mã truy cập không hợp lệ" in wrong.output and "not valid" in wrong.output
    nowhere = f"http://127.0.0.1:{free_port()}"
    for args in (["status"], ["availability", "region", "1"]):
        down = loa(*args, "--api", nowhere, "--token", served.admin)
        assert down.exit_code == 2
        assert "Không kết nối được" in down.output and "cannot reach the service" in down.output
        assert nowhere in down.output  # where it looked


def test_no_command_creates_a_database_file(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    monkeypatch.delenv("LOA_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        for token in (served.admin, ""):
            for args in (["status", "--all"], ["availability", "region", str(served.ids["x"]), *WINDOW],
                         ["availability", "receiver", "x-1"], ["availability", "station", str(served.ids["sx"])]):
                loa(*args, "--api", served.url, "--token", token)
        assert loa("status", "--api", served.url, "--token", served.admin).exit_code == 0
    finally:
        get_settings.cache_clear()
    assert list(empty.iterdir()) == []


def test_an_outage_still_going_on_is_said_so_when_the_end_is_left_out(served: Served):
    result = loa("availability", "receiver", "y-1", "--from", "2026-07-01T07:00:00",
                 "--api", served.url, "--token", served.admin)
    assert result.exit_code == 0, result.output
    assert "(đang mất / ongoing)" in result.output


def test_status_and_availability_agree_on_who_is_down_and_since_when(served: Served):
    """``loa status``'s "down since" is the ongoing outage ``loa availability`` reports: both are
    the service's answers from the same ledger."""
    as_admin = ["--api", served.url, "--token", served.admin]
    status = loa("status", "--all", *as_admin)
    assert status.exit_code == 0, status.output
    for rid in ("x-1", "y-1"):
        [line] = [line for line in status.output.splitlines() if line.strip().startswith(rid)]
        down = "MẤT KẾT NỐI / DOWN" in line
        result = loa("availability", "receiver", rid, "--from", "2026-07-01T06:00:00", *as_admin)
        assert result.exit_code == 0, result.output
        ongoing = [o for o in result.output.splitlines() if "(đang mất / ongoing)" in o]
        assert bool(ongoing) == down, (status.output, result.output)
        if down:
            since = line.split("từ / since ")[1].split(" (")[0]
            assert f"{rid}: {since} →" in ongoing[0], (line, ongoing)
