from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.runtime import Runtime
from tests.support.influxdb1 import Influx1, influx1
from tests.support.victoria import VictoriaMetrics, victoria


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with victoria(tmp_path / "vm") as server:
        yield server


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[Influx1]:
    with influx1(tmp_path / "influxdb") as server:
        server.create_database("loa")
        yield server


def telemetry_body(session: int, seq: int, ts: int, **fields: Any) -> dict[str, Any]:
    """A telemetry report as a receiver sends it (wire names)."""
    body: dict[str, Any] = {"v": 1, "session": session, "seq": seq, "ts": ts, "up": 100 + seq, "amp": "on",
                            "st": "playing", "fw": "1.2.0"}
    body.update(fields)
    return body


def payload(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, Runtime, httpx.AsyncClient]]:
    """The whole service as ``loa serve`` runs it (the app's lifespan: telemetry, embedded broker,
    ingest), in the test's event loop, with an API client authenticated as an admin."""
    runtime = Runtime.from_settings(settings)
    with session_scope(runtime.sessions) as s:
        user = auth.get_user(s, "admin") if _has_admin(s) else auth.create_user(s, "admin", role="admin")
        token = auth.issue_token(s, user.id, "telemetry tests")[1]
    app = create_app(runtime=runtime)
    try:
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://loa.test",
                headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            yield app, runtime, client
    finally:
        runtime.close()


def _has_admin(session) -> bool:  # type: ignore[no-untyped-def]
    from fleet_service.errors import NotFound

    try:
        auth.get_user(session, "admin")
        return True
    except NotFound:
        return False


def populate_registry(session_factory):  # type: ignore[no-untyped-def]
    """Thái Nguyên / Đại Từ / An Khánh and Hùng Sơn, a station in each, rx-1 at An Khánh and
    rx-spare on no station. Returns (sessions, An Khánh's station id, Hùng Sơn's station id)."""
    with session_scope(session_factory) as s:
        province = registry.create_region(s, RegionCreate(name="Thái Nguyên", level="tỉnh", code="thai-nguyen"))
        district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện", code="thai-nguyen.dai-tu",
                                                          parent_id=province.id))
        commune = registry.create_region(s, RegionCreate(name="An Khánh", level="xã", code="thai-nguyen.dai-tu.an-khanh",
                                                         parent_id=district.id))
        other = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn",
                                                       code="thai-nguyen.dai-tu.hung-son", parent_id=district.id))
        station = registry.create_station(s, StationCreate(region_id=commune.id, name="Đài An Khánh"))
        station2 = registry.create_station(s, StationCreate(region_id=other.id, name="Đài Hùng Sơn"))
        registry.register_receiver(s, ReceiverCreate(id="rx-1", hardware_id="hw-1", station_id=station.id))
        registry.register_receiver(s, ReceiverCreate(id="rx-spare", hardware_id="hw-2"))
        return session_factory, station.id, station2.id
