"""Availability over the API, from a ledger written by the ledger writer, with scoping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.runtime import Runtime
from fleet_service.uptime.models import Connectivity, TransitionCause
from fleet_service.uptime.service import record_transitions
from fleet_service.uptime.tracker import Transition

T0 = datetime(2026, 7, 1, 0, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.fixture
def world(db_url):
    runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test"))
    with session_scope(runtime.sessions) as s:
        district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
        x = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn", parent_id=district.id))
        y = registry.create_region(s, RegionCreate(name="Quân Chu", level="thị trấn", parent_id=district.id))
        sx = registry.create_station(s, StationCreate(region_id=x.id, name="Đài Hùng Sơn"))
        sy = registry.create_station(s, StationCreate(region_id=y.id, name="Đài Quân Chu"))
        for rid, station in (("x-1", sx.id), ("x-2", sx.id), ("y-1", sy.id)):
            registry.register_receiver(s, ReceiverCreate(id=rid, hardware_id=f"hw-{rid}", station_id=station))
        on, off = Connectivity.ONLINE, Connectivity.OFFLINE
        transitions = [
            # x-1: up 0-60, down 60-90, up 90-120 (window 0-120: 75 % online, one 30 min outage)
            Transition("x-1", on, at(0), TransitionCause.BIRTH, 1),
            Transition("x-1", off, at(60), TransitionCause.WILL, 1),
            Transition("x-1", on, at(90), TransitionCause.BIRTH, 2),
            Transition("x-1", off, at(120), TransitionCause.SHUTDOWN, 2),
            # x-2: up the whole window
            Transition("x-2", on, at(0), TransitionCause.BIRTH, 1),
            Transition("x-2", off, at(120), TransitionCause.SHUTDOWN, 1),
            # y-1: down 10-20
            Transition("y-1", on, at(0), TransitionCause.BIRTH, 1),
            Transition("y-1", off, at(10), TransitionCause.SILENT, 1),
            Transition("y-1", on, at(20), TransitionCause.RESUMED, 1),
        ]
        stations = {"x-1": sx.id, "x-2": sx.id, "y-1": sy.id}
        record_transitions(s, transitions, stations)
        auth.create_user(s, "admin", role="admin")
        op = auth.create_user(s, "op.hungson", role="operator", region_id=x.id)
        admin_token = auth.issue_token(s, auth.get_user(s, "admin").id, "t")[1]
        op_token = auth.issue_token(s, op.id, "t")[1]
        ids = {"district": district.id, "x": x.id, "y": y.id, "sx": sx.id, "sy": sy.id}
    app = create_app(runtime=runtime, mqtt=False)
    with TestClient(app) as client:
        yield client, ids, {"Authorization": f"Bearer {admin_token}"}, {"Authorization": f"Bearer {op_token}"}
    runtime.close()


WINDOW = {"start": at(0).isoformat(), "end": at(120).isoformat()}


def test_receiver_availability(world):
    client, _, admin, _ = world
    body = client.get("/api/v1/receivers/x-1/availability", params=WINDOW, headers=admin).json()
    assert body["online_percent"] == pytest.approx(75.0)
    assert body["outage_count"] == 1
    assert body["longest_outage_s"] == pytest.approx(1800)
    assert body["outages"][0]["start"].startswith("2026-07-01T01:00:00")


def test_station_and_region_are_weighted_by_receiver_time(world):
    client, ids, admin, _ = world
    station = client.get(f"/api/v1/stations/{ids['sx']}/availability", params=WINDOW, headers=admin).json()
    assert station["receivers"] == 2
    assert station["online_percent"] == pytest.approx((90 + 120) / 240 * 100)
    district = client.get(f"/api/v1/regions/{ids['district']}/availability", params=WINDOW, headers=admin).json()
    assert district["receivers"] == 3
    assert district["outage_count"] == 2
    assert district["online_percent"] == pytest.approx((90 + 120 + 110) / 360 * 100)


def test_naive_times_are_vietnam_time(world):
    client, _, admin, _ = world
    # 07:00-09:00 in Hà Nội is 00:00-02:00 UTC: the same window as above.
    body = client.get("/api/v1/receivers/x-1/availability",
                      params={"start": "2026-07-01T07:00:00", "end": "2026-07-01T09:00:00"}, headers=admin).json()
    assert body["online_percent"] == pytest.approx(75.0)


def test_operator_sees_only_own_commune(world):
    client, ids, _, operator = world
    assert client.get("/api/v1/receivers/x-1/availability", params=WINDOW, headers=operator).status_code == 200
    for url in ("/api/v1/receivers/y-1/availability", "/api/v1/receivers/y-1/connectivity",
                f"/api/v1/stations/{ids['sy']}/availability", f"/api/v1/regions/{ids['y']}/availability",
                f"/api/v1/regions/{ids['district']}/availability"):
        response = client.get(url, params=WINDOW, headers=operator)
        assert response.status_code == 404, url
        assert response.json()["error"]["code"] == "not_found"
    live = client.get("/api/v1/live/receivers", headers=operator).json()
    assert sorted(r["receiver_id"] for r in live["receivers"]) == ["x-1", "x-2"]


def test_live_status_answers_which_ones_are_down(world):
    client, _, admin, _ = world
    live = client.get("/api/v1/live/receivers", params={"state": "offline"}, headers=admin).json()
    assert (live["online"], live["offline"], live["never_seen"]) == (1, 2, 0)
    assert sorted(r["receiver_id"] for r in live["receivers"]) == ["x-1", "x-2"]


def test_connectivity_timeline(world):
    client, _, admin, _ = world
    rows = client.get("/api/v1/receivers/x-1/connectivity", params=WINDOW, headers=admin).json()
    # The interval that begins exactly at the window's end is outside [start, end).
    assert [(r["state"], r["start_cause"], r["end_cause"]) for r in rows] == [
        ("online", "birth", "will"), ("offline", "will", "birth"), ("online", "birth", "shutdown")]


def test_bad_period_and_no_token(world):
    client, _, admin, _ = world
    bad = client.get("/api/v1/receivers/x-1/availability", params={"start": at(5).isoformat(), "end": at(1).isoformat()},
                     headers=admin)
    assert bad.status_code == 422 and "sau" in bad.json()["error"]["message"]
    assert client.get("/api/v1/receivers/x-1/availability").status_code == 401


def test_an_outage_still_under_way_is_ongoing_when_the_period_ends_now(world):
    client, ids, admin, _ = world
    # x-1 has been down since it shut down at 02:00 and still is: with the end left to default
    # (now), the answer's end and "ongoing" must come from the same now.
    for url in ("/api/v1/receivers/x-1/availability", f"/api/v1/stations/{ids['sx']}/availability",
                f"/api/v1/regions/{ids['x']}/availability"):
        body = client.get(url, params={"start": at(100).isoformat()}, headers=admin).json()
        open_outages = [o for o in body["outages"] if o["receiver_id"] == "x-1" and o["start"].startswith("2026-07-01T02:00:00")]
        assert len(open_outages) == 1, (url, body)
        assert open_outages[0]["ongoing"] is True, (url, body)
        assert open_outages[0]["end"] == body["end"], (url, body)
