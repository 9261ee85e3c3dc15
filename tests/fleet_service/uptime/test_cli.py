"""``loa availability`` reads the same ledger as the API and speaks Vietnamese first."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fleet_service.cli import app
from fleet_service.config import get_settings
from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.uptime.models import Connectivity, TransitionCause
from fleet_service.uptime.service import record_transitions
from fleet_service.uptime.tracker import Transition
from tests.fleet_service.uptime.test_endpoints import at


@pytest.fixture
def cli_db(sqlite_url, monkeypatch):
    engine = make_engine(sqlite_url)
    with session_scope(make_sessionmaker(engine)) as s:
        region = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn"))
        station = registry.create_station(s, StationCreate(region_id=region.id, name="Đài Hùng Sơn"))
        registry.register_receiver(s, ReceiverCreate(id="x-1", hardware_id="hw-1", station_id=station.id))
        record_transitions(s, [
            Transition("x-1", Connectivity.ONLINE, at(0), TransitionCause.BIRTH, 1),
            Transition("x-1", Connectivity.OFFLINE, at(30), TransitionCause.WILL, 1),
            Transition("x-1", Connectivity.ONLINE, at(45), TransitionCause.BIRTH, 2),
        ], {"x-1": station.id})
        ids = (region.id, station.id)
    engine.dispose()
    monkeypatch.setenv("LOA_DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    yield ids
    get_settings.cache_clear()


def test_receiver_station_and_region_availability(cli_db):
    region_id, station_id = cli_db
    runner = CliRunner()
    # 07:00-08:00 Vietnam time = 00:00-01:00 UTC: down 00:30-00:45, 75 %.
    window = ["--from", "2026-07-01T07:00:00", "--to", "2026-07-01T08:00:00"]
    for args in (["receiver", "x-1"], ["station", str(station_id)], ["region", str(region_id)]):
        result = runner.invoke(app, ["availability", *args, *window])
        assert result.exit_code == 0, result.output
        assert "75.000 %" in result.output
        assert "Số lần mất kết nối / outages: 1" in result.output
        assert "00:15:00" in result.output  # the outage's length
        assert "01/07/2026 07:30:00" in result.output  # shown in Vietnam time


def test_unknown_receiver_is_a_clear_error(cli_db):
    result = CliRunner().invoke(app, ["availability", "receiver", "nope"])
    assert result.exit_code == 1
    assert "Không tìm thấy" in result.output and "not found" in result.output


def test_status_lists_who_is_down_since_when(cli_db):
    region_id, _ = cli_db
    result = CliRunner().invoke(app, ["status", "--region", str(region_id)])
    assert result.exit_code == 0, result.output
    # x-1 came back online at 00:45: nothing is down.
    assert "Hoạt động / online: 1   Mất kết nối / down: 0" in result.output
    assert "x-1" not in result.output
    listed = CliRunner().invoke(app, ["status", "--all"])
    assert "x-1" in listed.output and "01/07/2026 07:45:00" in listed.output
