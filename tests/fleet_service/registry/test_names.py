"""Names of regions and stations: one written form (NFC, trimmed), never blank, never twice
under one parent, and listed in Vietnamese order, through the API, the CLI and the importer."""

from __future__ import annotations

import unicodedata

import pytest
from typer.testing import CliRunner

from fleet_service.auth.models import Role
from fleet_service.cli import app as loa_app
from fleet_service.config import get_settings
from fleet_service.errors import Conflict, Invalid
from fleet_service.registry import service
from fleet_service.registry.names import vietnamese_key
from tests.fleet_service.auth.world import World, ok

# Real units, in the order a Vietnamese dictionary gives them: a < ă < â, d < đ < e, and the
# syllables compared one by one ("Ý" before "Yên"), letters before tones ("Ba Vì" before "Bà Rịa").
IN_ORDER = ["An Khánh", "Ân Thi", "Ba Vì", "Bà Rịa", "Bá Thước", "Dân Chủ", "Đại Từ", "Định Hoá", "Ea Kar",
            "Ý Yên", "Yên Lãng"]
SHUFFLED = ["Yên Lãng", "Đại Từ", "Ea Kar", "Ý Yên", "Bà Rịa", "Ân Thi", "Định Hoá", "An Khánh", "Dân Chủ",
            "Bá Thước", "Ba Vì"]


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_the_vietnamese_order():
    assert sorted(SHUFFLED, key=vietnamese_key) == IN_ORDER
    # Tones after the bare syllable, in the order không dấu, huyền, hỏi, ngã, sắc, nặng.
    assert sorted(["bạ", "bá", "bã", "bả", "bà", "ba", "bác"], key=vietnamese_key) == \
        ["ba", "bà", "bả", "bã", "bá", "bạ", "bác"]
    assert sorted(["Phường 10", "Phường 9"], key=vietnamese_key) == ["Phường 9", "Phường 10"]
    assert vietnamese_key(nfd("ĐỊNH HOÁ")) == vietnamese_key("Định Hoá")


def test_names_are_kept_in_nfc_trimmed_and_never_blank(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    region = ok(world.client.post("/api/v1/regions", json={"name": f"  {nfd('Đại Từ')} ", "level": "huyện"},
                                  headers=admin), 201)
    assert region["name"] == "Đại Từ" == unicodedata.normalize("NFC", region["name"])
    station = ok(world.client.post("/api/v1/stations", json={"region_id": region["id"],
                                                             "name": nfd(" Đài Định Hoá\t")}, headers=admin), 201)
    assert station["name"] == "Đài Định Hoá"

    for method, url, body in (
        ("post", "/api/v1/regions", {"name": "   ", "level": "xã", "parent_id": region["id"]}),
        ("patch", f"/api/v1/regions/{region['id']}", {"name": " \t "}),
        ("post", "/api/v1/stations", {"region_id": region["id"], "name": "  "}),
        ("patch", f"/api/v1/stations/{station['id']}", {"name": "\u3000"}),
    ):
        response = getattr(world.client, method)(url, json=body, headers=admin)
        assert response.status_code == 422, (url, response.text)
        error = response.json()["error"]
        assert "trống" in error["message"] and "blank" in error["message_en"], error
    assert ok(world.client.get(f"/api/v1/regions/{region['id']}", headers=admin))["name"] == "Đại Từ"


def test_a_name_twice_under_one_parent_is_refused(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)

    def post(url: str, body: dict, status: int = 201) -> dict:
        return ok(world.client.post(url, json=body, headers=admin), status)

    def refused(response) -> None:  # type: ignore[no-untyped-def]
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert error["code"] == "conflict" and "Đã có" in error["message"] and "already" in error["message_en"]

    province = post("/api/v1/regions", {"name": "Thái Nguyên", "level": "tỉnh"})
    dai_tu = post("/api/v1/regions", {"name": "Đại Từ", "level": "huyện", "parent_id": province["id"]})
    dinh_hoa = post("/api/v1/regions", {"name": "Định Hoá", "level": "huyện", "parent_id": province["id"]})
    an_khanh = post("/api/v1/regions", {"name": "An Khánh", "level": "xã", "parent_id": dai_tu["id"]})

    # Create: the same name again, in NFD, in capitals, with spaces around.
    for name in ("Đại Từ", nfd("Đại Từ"), "ĐẠI TỪ", "  đại từ "):
        refused(world.client.post("/api/v1/regions", json={"name": name, "level": "huyện", "parent_id": province["id"]},
                                  headers=admin))
    refused(world.client.post("/api/v1/regions", json={"name": "thái nguyên", "level": "tỉnh"}, headers=admin))
    # The same name under another parent is another unit.
    post("/api/v1/regions", {"name": "An Khánh", "level": "xã", "parent_id": dinh_hoa["id"]})
    # Rename onto a sibling's name; renaming to itself (in another case) is fine.
    refused(world.client.patch(f"/api/v1/regions/{dinh_hoa['id']}", json={"name": nfd("đại từ")}, headers=admin))
    assert ok(world.client.patch(f"/api/v1/regions/{dinh_hoa['id']}", json={"name": "ĐỊNH HOÁ"},
                                 headers=admin))["name"] == "ĐỊNH HOÁ"
    # Move next to a unit of the same name.
    refused(world.client.post(f"/api/v1/regions/{an_khanh['id']}/move", json={"parent_id": dinh_hoa["id"]},
                              headers=admin))
    assert ok(world.client.get(f"/api/v1/regions/{an_khanh['id']}", headers=admin))["parent_id"] == dai_tu["id"]

    # Stations: one name once per region.
    post("/api/v1/stations", {"region_id": an_khanh["id"], "name": "Đài An Khánh"})
    other = post("/api/v1/stations", {"region_id": dai_tu["id"], "name": "Đài An Khánh"})
    refused(world.client.post("/api/v1/stations", json={"region_id": an_khanh["id"], "name": nfd("ĐÀI AN KHÁNH")},
                              headers=admin))
    refused(world.client.patch(f"/api/v1/stations/{other['id']}", json={"region_id": an_khanh["id"]}, headers=admin))


def test_the_importer_normalises_and_refuses_blank_and_twice_named_units(world: World) -> None:
    inventory = {"regions": [{"code": "tn", "name": nfd(" Thái Nguyên "), "level": "tỉnh", "children": [
        {"code": "tn.dt", "name": nfd("Đại Từ"), "level": "huyện",
         "stations": [{"name": nfd("Đài truyền thanh Đại Từ ")}]}]}]}
    with world.session() as session:
        summary = service.import_regions(session, inventory)
        assert (summary.regions_created, summary.stations_created) == (2, 1)
        names = [r.name for r in service.list_regions(session)]
        assert names == ["Thái Nguyên", "Đại Từ"]
        assert [s.name for s in service.list_stations(session)] == ["Đài truyền thanh Đại Từ"]
        # Imported again in NFC: the same units and the same station, nothing new.
        again = service.import_regions(session, {"regions": [{"code": "tn", "name": "Thái Nguyên", "level": "tỉnh",
                                                              "children": [{"code": "tn.dt", "name": "Đại Từ",
                                                                            "level": "huyện", "stations": [
                                                                                {"name": "Đài truyền thanh Đại Từ"}]}]}]})
        assert (again.regions_created, again.stations_created, again.stations_updated) == (0, 0, 0)

    twice = {"regions": [{"code": "tn", "name": "Thái Nguyên", "level": "tỉnh", "children": [
        {"code": "tn.dt", "name": "Đại Từ", "level": "huyện"},
        {"code": "tn.dt2", "name": "ĐẠI TỪ", "level": "huyện"}]}]}
    blank = {"regions": [{"code": "tn", "name": "  ", "level": "tỉnh"}]}
    with world.session() as session:
        with pytest.raises(Conflict) as conflict:
            service.import_regions(session, twice)
        assert "Đại Từ" in conflict.value.message_vi and "already" in conflict.value.message_en
        session.rollback()
        with pytest.raises(Invalid) as invalid:
            service.import_regions(session, blank)
        assert "trống" in invalid.value.message_vi and "blank" in invalid.value.message_en


def test_lists_are_in_vietnamese_order(world: World, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = world.user("admin", Role.ADMIN)
    province = ok(world.client.post("/api/v1/regions", json={"name": "Tỉnh", "level": "tỉnh"}, headers=admin), 201)
    for name in SHUFFLED:
        region = ok(world.client.post("/api/v1/regions", json={"name": name, "level": "huyện",
                                                               "parent_id": province["id"]}, headers=admin), 201)
        ok(world.client.post("/api/v1/stations", json={"region_id": region["id"], "name": f"Đài {name}"},
                             headers=admin), 201)
    regions = ok(world.client.get("/api/v1/regions", headers=admin))
    assert [r["name"] for r in regions] == ["Tỉnh", *IN_ORDER]
    stations = ok(world.client.get("/api/v1/stations", headers=admin))
    assert [s["name"] for s in stations] == [f"Đài {name}" for name in IN_ORDER]

    monkeypatch.setenv("LOA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        tree = runner.invoke(loa_app, ["regions", "list"]).output
        listed = runner.invoke(loa_app, ["stations", "list"]).output
    finally:
        get_settings.cache_clear()
    positions = [tree.index(f"  {name}  ") for name in IN_ORDER]
    assert positions == sorted(positions), tree
    positions = [listed.index(f"Đài {name}  ") for name in IN_ORDER]
    assert positions == sorted(positions), listed
