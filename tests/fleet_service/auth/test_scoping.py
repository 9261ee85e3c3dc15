"""An operator of commune X can neither see nor act on commune Y; a technician of X manages X
only. Out of scope answers exactly like absent (404), so nothing about Y leaks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import select

from fleet_service.auth.models import Role
from fleet_service.registry.models import Receiver, ReceiverCredential
from tests.fleet_service.auth.world import World, ok


@dataclass
class District:
    district: int
    x: int          # commune X
    y: int          # commune Y
    station_x: int
    station_y: int


@pytest.fixture
def district(world: World) -> District:
    admin = world.user("admin", Role.ADMIN)

    def post(url: str, body: dict) -> dict:
        return ok(world.client.post(url, json=body, headers=admin), 201)

    district = post("/api/v1/regions", {"name": "Đại Từ", "level": "huyện"})["id"]
    x = post("/api/v1/regions", {"name": "Hùng Sơn", "level": "thị trấn", "parent_id": district})["id"]
    y = post("/api/v1/regions", {"name": "Cát Nê", "level": "xã", "parent_id": district})["id"]
    hamlet = post("/api/v1/regions", {"name": "Xóm 1", "level": "xóm", "parent_id": x})["id"]
    station_x = post("/api/v1/stations", {"region_id": hamlet, "name": "Đài Hùng Sơn"})["id"]
    station_y = post("/api/v1/stations", {"region_id": y, "name": "Đài Cát Nê"})["id"]
    post("/api/v1/receivers", {"id": "hs-01", "hardware_id": "hx", "station_id": station_x})
    post("/api/v1/receivers", {"id": "cn-01", "hardware_id": "hy", "station_id": station_y})
    post("/api/v1/receivers", {"id": "spare", "hardware_id": "hs"})  # on no station: whole-fleet users only
    return District(district, x, y, station_x, station_y)


def test_operator_of_x_sees_only_x(world: World, district: District) -> None:
    op = world.user("op.x", Role.OPERATOR, district.x)
    get = lambda url, **params: world.client.get(url, params=params, headers=op)  # noqa: E731

    assert [s["id"] for s in ok(get("/api/v1/stations"))] == [district.station_x]
    assert [r["id"] for r in ok(get("/api/v1/receivers"))] == ["hs-01"]
    assert [r["name"] for r in ok(get("/api/v1/regions"))] == ["Hùng Sơn", "Xóm 1"]
    assert ok(get(f"/api/v1/stations/{district.station_x}"))["name"] == "Đài Hùng Sơn"
    assert ok(get("/api/v1/receivers/hs-01"))["station_id"] == district.station_x
    assert len(ok(get(f"/api/v1/stations/{district.station_x}/history"))) == 1

    absent = get("/api/v1/receivers/no-such-receiver")
    for url, params in [
        (f"/api/v1/stations/{district.station_y}", {}),
        (f"/api/v1/stations/{district.station_y}/history", {}),
        ("/api/v1/receivers/cn-01", {}),
        ("/api/v1/receivers/spare", {}),
        (f"/api/v1/regions/{district.y}", {}),
        (f"/api/v1/regions/{district.district}", {}),
        ("/api/v1/regions", {"root_id": district.y}),
        ("/api/v1/stations", {"region_id": district.y}),
        ("/api/v1/receivers", {"region_id": district.y}),
    ]:
        r = get(url, **params)
        assert r.status_code == 404, (url, r.text)
        assert r.json()["error"]["code"] == absent.json()["error"]["code"] == "not_found"
    assert ok(get("/api/v1/receivers", station_id=district.station_y)) == []


def test_operator_of_x_cannot_act_on_y_or_anywhere(world: World, district: District) -> None:
    op = world.user("op.x", Role.OPERATOR, district.x)
    attempts = [
        ("post", "/api/v1/receivers/cn-01/provision", None),
        ("post", "/api/v1/receivers/cn-01/revoke", None),
        ("patch", "/api/v1/receivers/cn-01", {"notes": "x"}),
        ("post", f"/api/v1/stations/{district.station_y}/replace",
         {"old_receiver_id": "cn-01", "new": {"id": "cn-02", "hardware_id": "h"}}),
        ("post", "/api/v1/receivers", {"id": "cn-03", "hardware_id": "h3", "station_id": district.station_y}),
        ("post", "/api/v1/stations", {"region_id": district.y, "name": "Đài mới"}),
        ("delete", f"/api/v1/regions/{district.y}", None),
        # Its own commune too: operators read (and later send commands); they do not register.
        ("post", "/api/v1/receivers/hs-01/provision", None),
        ("post", "/api/v1/receivers", {"id": "hs-02", "hardware_id": "h4", "station_id": district.station_x}),
    ]
    for method, url, body in attempts:
        r = world.client.request(method, url, json=body, headers=op)
        # Refused on the role, before anything is looked up: the same answer for X and Y.
        assert r.status_code == 403, (url, r.text)
        assert "operator" in r.json()["error"]["message_en"]
    with world.session() as session:
        assert session.scalars(select(ReceiverCredential)).all() == []
        assert {r.id: r.status for r in session.scalars(select(Receiver))} == \
            {"hs-01": "active", "cn-01": "active", "spare": "active"}


def test_technician_of_x_manages_x_and_nothing_else(world: World, district: District) -> None:
    tech = world.user("kt.x", Role.TECHNICIAN, district.x)

    def call(method: str, url: str, body: dict | None = None):  # type: ignore[no-untyped-def]
        return world.client.request(method, url, json=body, headers=tech)

    # Inside X: stations and receivers, the whole life cycle.
    ok(call("post", "/api/v1/stations", {"region_id": district.x, "name": "Đài Xóm 2"}), 201)
    ok(call("post", "/api/v1/receivers", {"id": "hs-02", "hardware_id": "h2", "station_id": district.station_x}), 201)
    ok(call("post", "/api/v1/receivers/hs-02/provision"), 201)
    ok(call("post", f"/api/v1/stations/{district.station_x}/replace",
            {"old_receiver_id": "hs-01", "new": {"id": "hs-03", "hardware_id": "h3"}}))
    ok(call("post", "/api/v1/receivers/hs-02/revoke"))

    # Y, or out of any station: refused, and Y looks absent.
    for method, url, body, status in [
        ("post", "/api/v1/receivers", {"id": "cn-02", "hardware_id": "h5", "station_id": district.station_y}, 404),
        ("post", "/api/v1/receivers/cn-01/provision", None, 404),
        ("post", "/api/v1/receivers/cn-01/revoke", None, 404),
        ("patch", "/api/v1/receivers/cn-01", {"notes": "x"}, 404),
        ("patch", "/api/v1/receivers/hs-03", {"station_id": district.station_y}, 404),  # move X's into Y
        ("post", f"/api/v1/stations/{district.station_y}/replace",
         {"old_receiver_id": "cn-01", "new": {"id": "cn-02", "hardware_id": "h5"}}, 404),
        ("post", "/api/v1/stations", {"region_id": district.y, "name": "Đài mới"}, 404),
        ("patch", f"/api/v1/stations/{district.station_x}", {"region_id": district.y}, 404),
        ("post", "/api/v1/receivers", {"id": "loose", "hardware_id": "h6"}, 403),
        ("post", "/api/v1/regions", {"name": "Mới", "level": "xã", "parent_id": district.x}, 403),
        ("get", "/api/v1/users", None, 403),
    ]:
        r = call(method, url, body)
        assert r.status_code == status, (method, url, r.text)

    admin = world.user("admin2", Role.ADMIN)
    assert ok(world.client.get("/api/v1/receivers/cn-01", headers=admin))["status"] == "active"
    assert ok(world.client.get("/api/v1/receivers/hs-03", headers=admin))["station_id"] == district.station_x
    assert world.client.get("/api/v1/receivers/cn-02", headers=admin).status_code == 404


def test_admin_sees_the_whole_fleet(world: World, district: District) -> None:
    admin = world.user("admin2", Role.ADMIN)
    receivers = ok(world.client.get("/api/v1/receivers", headers=admin))
    assert [r["id"] for r in receivers] == ["cn-01", "hs-01", "spare"]
    in_district = ok(world.client.get("/api/v1/receivers", params={"region_id": district.district}, headers=admin))
    assert [r["id"] for r in in_district] == ["cn-01", "hs-01"]
