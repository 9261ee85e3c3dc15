from __future__ import annotations

from importlib import resources

import pytest
import yaml
from sqlalchemy import func, select

from fleet_service.auth.models import Role
from fleet_service.errors import Invalid
from fleet_service.registry import service
from fleet_service.registry.models import Region, Station
from tests.fleet_service.auth.world import World, ok


def _tree(world: World, admin: dict[str, str], depth: int, prefix: str, parent: int | None = None) -> list[dict]:
    chain = []
    for level in range(depth):
        body = {"name": f"{prefix}{level}", "level": f"cấp {level}", "parent_id": parent}
        region = ok(world.client.post("/api/v1/regions", json=body, headers=admin), 201)
        chain.append(region)
        parent = region["id"]
    return chain


def test_tree_of_depth_five_paths_and_moves(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    a = _tree(world, admin, 5, "a")
    b = _tree(world, admin, 2, "b")
    ids = [r["id"] for r in a]
    assert a[4]["path"] == "/" + "/".join(map(str, ids)) + "/"

    # Subtree listing: a2 and everything below it, parents first.
    sub = ok(world.client.get("/api/v1/regions", params={"root_id": ids[2]}, headers=admin))
    assert [r["id"] for r in sub] == ids[2:]
    assert len(ok(world.client.get("/api/v1/regions", headers=admin))) == 7

    # Move a2 (with a3, a4) under b1: the whole subtree follows.
    moved = ok(world.client.post(f"/api/v1/regions/{ids[2]}/move", json={"parent_id": b[1]["id"]}, headers=admin))
    base = f"/{b[0]['id']}/{b[1]['id']}/"
    assert moved["path"] == f"{base}{ids[2]}/"
    deepest = ok(world.client.get(f"/api/v1/regions/{ids[4]}", headers=admin))
    assert deepest["path"] == f"{base}{ids[2]}/{ids[3]}/{ids[4]}/"
    assert [r["id"] for r in ok(world.client.get("/api/v1/regions", params={"root_id": b[0]["id"]}, headers=admin))] \
        == [b[0]["id"], b[1]["id"], *ids[2:]]
    assert [r["id"] for r in ok(world.client.get("/api/v1/regions", params={"root_id": ids[0]}, headers=admin))] \
        == ids[:2]

    # No cycles: not under itself, not under its own descendant.
    for target in (ids[2], ids[4]):
        r = world.client.post(f"/api/v1/regions/{ids[2]}/move", json={"parent_id": target}, headers=admin)
        assert r.status_code == 422, r.text
        assert "Không thể chuyển" in r.json()["error"]["message"]

    # To the top, and back: paths stay consistent with parent_id everywhere.
    ok(world.client.post(f"/api/v1/regions/{ids[2]}/move", json={"parent_id": None}, headers=admin))
    ok(world.client.post(f"/api/v1/regions/{ids[2]}/move", json={"parent_id": ids[1]}, headers=admin))
    with world.session() as session:
        regions = {r.id: r for r in session.scalars(select(Region))}
        for r in regions.values():
            expected = (regions[r.parent_id].path if r.parent_id else "/") + f"{r.id}/"
            assert r.path == expected

    # Rename keeps the place in the tree; codes are unique.
    renamed = ok(world.client.patch(f"/api/v1/regions/{ids[1]}", json={"name": "Vạn Phú", "code": "vp"}, headers=admin))
    assert (renamed["name"], renamed["path"]) == ("Vạn Phú", a[1]["path"])
    clash = world.client.patch(f"/api/v1/regions/{ids[0]}", json={"code": "vp"}, headers=admin)
    assert clash.status_code == 409 and "vp" in clash.json()["error"]["message_en"]

    # Delete: refused while it has children or stations, then allowed.
    assert world.client.delete(f"/api/v1/regions/{ids[3]}", headers=admin).status_code == 409
    ok(world.client.post("/api/v1/stations", json={"region_id": ids[4], "name": "Đài"}, headers=admin), 201)
    refused = world.client.delete(f"/api/v1/regions/{ids[4]}", headers=admin)
    assert refused.status_code == 409 and "stations" in refused.json()["error"]["message_en"]
    assert world.client.delete(f"/api/v1/regions/{b[1]['id']}", headers=admin).status_code == 204
    assert world.client.get(f"/api/v1/regions/{b[1]['id']}", headers=admin).status_code == 404


def test_region_used_as_a_user_scope_is_not_deleted(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    [commune] = _tree(world, admin, 1, "x")
    world.user("op", Role.OPERATOR, commune["id"])
    r = world.client.delete(f"/api/v1/regions/{commune['id']}", headers=admin)
    assert r.status_code == 409, r.text
    assert world.client.get(f"/api/v1/regions/{commune['id']}", headers=admin).status_code == 200


def _demo() -> dict:
    text = resources.files("fleet_service.registry").joinpath("seed_data/dai_tu.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def test_demo_inventory_import_is_idempotent_and_follows_reorganisation(world: World) -> None:
    data = _demo()
    with world.session() as session:
        first = service.import_regions(session, data)
    assert (first.regions_created, first.stations_created) == (31, 29)

    with world.session() as session:
        again = service.import_regions(session, data)
        assert again.model_dump() == dict.fromkeys(again.model_dump(), 0)
        district = session.scalar(select(Region).where(Region.code == "thai-nguyen.dai-tu"))
        communes = service.list_regions(session, root_id=district.id)
        assert len(communes) == 30
        assert {r.level for r in communes[1:]} == {"xã", "thị trấn"}
        assert session.scalar(select(func.count()).select_from(Station)) == 29
        hung_son = session.scalar(select(Region).where(Region.code == "thai-nguyen.dai-tu.hung-son"))
        [station] = service.list_stations(session, region_id=hung_son.id)
        assert station.name == "Đài truyền thanh Hùng Sơn"

    # July 2025: the district level is gone and communes hang directly off the province.
    province = data["regions"][0]
    province["children"] = province["children"][0]["children"]
    with world.session() as session:
        moved = service.import_regions(session, data)
        assert (moved.regions_created, moved.regions_updated) == (0, 29)
        province_row = session.scalar(select(Region).where(Region.code == "thai-nguyen"))
        hung_son = session.scalar(select(Region).where(Region.code == "thai-nguyen.dai-tu.hung-son"))
        assert hung_son.path == f"{province_row.path}{hung_son.id}/"


def test_import_rejects_malformed_data_with_a_clear_message(world: World) -> None:
    with world.session() as session, pytest.raises(Invalid) as caught:
        service.import_regions(session, {"regions": [{"code": "x", "name": "X"}]})
    assert "regions.0.level" in caught.value.message_en
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(Region)) == 0
