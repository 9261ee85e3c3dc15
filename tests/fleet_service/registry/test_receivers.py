from __future__ import annotations

import hashlib

from sqlalchemy import select

from fleet_service.auth.models import Role
from fleet_service.broker_port import RegistryOnlyAccounts
from fleet_service.worker.composition import broker_login_handlers
from fleet_service.outbox.dispatcher import OutboxDispatcher
from fleet_service.registry import service
from fleet_service.registry.models import ReceiverCredential, StationAssignment
from tests.fleet_service.auth.world import World, ok


def _station(world: World, admin: dict[str, str], name: str = "Đài truyền thanh Cát Nê") -> int:
    region = ok(world.client.post("/api/v1/regions", json={"name": name, "level": "xã"}, headers=admin), 201)
    body = {"region_id": region["id"], "name": name}
    return ok(world.client.post("/api/v1/stations", json=body, headers=admin), 201)["id"]


def _verify(world: World, receiver_id: str, password: str) -> bool:
    with world.session() as session:
        return service.verify_receiver_password(session, receiver_id, password)


def test_receiver_ids_are_validated_and_duplicates_refused_clearly(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    station = _station(world, admin)
    for bad in ("", "có-dấu", "a/b", "a+b", "x" * 65, "rx 1"):
        r = world.client.post("/api/v1/receivers", json={"id": bad, "hardware_id": "h"}, headers=admin)
        assert r.status_code == 422, (bad, r.text)
    r = world.client.post("/api/v1/receivers", json={"id": "a+b", "hardware_id": "h"}, headers=admin)
    assert "Mã thiết bị 'a+b' không hợp lệ" in r.json()["error"]["message"]

    body = {"id": "cn-01", "hardware_id": "860000000000001", "station_id": station, "firmware_version": "1.0.0",
            "latitude": 21.63, "longitude": 105.64}
    created = ok(world.client.post("/api/v1/receivers", json=body, headers=admin), 201)
    assert (created["status"], created["station_id"]) == ("active", station)

    dup_hw = world.client.post("/api/v1/receivers", json={**body, "id": "cn-02"}, headers=admin)
    assert dup_hw.status_code == 409
    assert dup_hw.json()["error"] == {
        "code": "conflict",
        "message": "Mã phần cứng '860000000000001' đã được đăng ký cho thiết bị cn-01",
        "message_en": "Hardware id '860000000000001' is already registered to receiver cn-01",
    }
    dup_id = world.client.post("/api/v1/receivers", json={**body, "hardware_id": "other"}, headers=admin)
    assert dup_id.status_code == 409 and "cn-01" in dup_id.json()["error"]["message_en"]
    assert world.client.get("/api/v1/receivers/cn-02", headers=admin).status_code == 404

    # Updating to another receiver's hardware id is refused the same way.
    ok(world.client.post("/api/v1/receivers", json={"id": "cn-02", "hardware_id": "h2"}, headers=admin), 201)
    clash = world.client.patch("/api/v1/receivers/cn-02", json={"hardware_id": "860000000000001"}, headers=admin)
    assert clash.status_code == 409
    changed = ok(world.client.patch("/api/v1/receivers/cn-02", json={"firmware_version": "1.1.0"}, headers=admin))
    assert (changed["firmware_version"], changed["hardware_id"]) == ("1.1.0", "h2")

    listed = ok(world.client.get("/api/v1/receivers", params={"station_id": station}, headers=admin))
    assert [r["id"] for r in listed] == ["cn-01"]
    assert [r["id"] for r in ok(world.client.get("/api/v1/receivers", params={"status": "active"}, headers=admin))] \
        == ["cn-01", "cn-02"]


def test_provisioning_shows_the_secret_once_and_stores_only_its_hash(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    station = _station(world, admin)
    ok(world.client.post("/api/v1/receivers", json={"id": "cn-01", "hardware_id": "h1", "station_id": station},
                         headers=admin), 201)
    assert not _verify(world, "cn-01", "anything")  # registered, not yet provisioned

    first = world.client.post("/api/v1/receivers/cn-01/provision", headers=admin)
    assert first.status_code == 201 and first.headers["cache-control"] == "no-store"
    password = first.json()["mqtt_password"]
    assert first.json()["mqtt_username"] == "cn-01"
    assert len(password) >= 26  # 160 bits, URL-safe base64
    assert password not in world.client.get("/api/v1/receivers/cn-01", headers=admin).text
    with world.session() as session:
        [row] = session.scalars(select(ReceiverCredential)).all()
        assert row.secret_hash == hashlib.sha256(password.encode()).hexdigest()
        assert row.revoked_at is None

    assert _verify(world, "cn-01", password)
    assert not _verify(world, "cn-01", password + "x")
    assert not _verify(world, "cn-01", "")
    assert not _verify(world, "unknown", password)

    # A new password replaces the old one.
    second = ok(world.client.post("/api/v1/receivers/cn-01/provision", headers=admin), 201)["mqtt_password"]
    assert second != password
    assert not _verify(world, "cn-01", password)
    assert _verify(world, "cn-01", second)

    # Revoked: no password works; provisioning again brings it back.
    revoked = ok(world.client.post("/api/v1/receivers/cn-01/revoke", headers=admin))
    assert revoked["status"] == "revoked"
    assert not _verify(world, "cn-01", second)
    with world.session() as session:
        assert all(c.revoked_at is not None for c in session.scalars(select(ReceiverCredential)))
    third = ok(world.client.post("/api/v1/receivers/cn-01/provision", headers=admin), 201)["mqtt_password"]
    assert _verify(world, "cn-01", third)
    assert ok(world.client.get("/api/v1/receivers/cn-01", headers=admin))["status"] == "active"


def test_replacement_retires_the_old_receiver_and_keeps_the_station_history(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    station = _station(world, admin)
    other = _station(world, admin, "Đài truyền thanh Ký Phú")
    ok(world.client.post("/api/v1/receivers", json={"id": "old-01", "hardware_id": "h1", "station_id": station},
                         headers=admin), 201)
    old_password = ok(world.client.post("/api/v1/receivers/old-01/provision", headers=admin), 201)["mqtt_password"]

    body = {"old_receiver_id": "old-01", "new": {"id": "new-01", "hardware_id": "h2"}, "note": "sét đánh"}
    result = ok(world.client.post(f"/api/v1/stations/{station}/replace", json=body, headers=admin))
    assert result["retired"]["status"] == "retired"
    assert (result["new"]["id"], result["new"]["station_id"], result["new"]["status"]) == ("new-01", station, "active")
    assert not _verify(world, "old-01", old_password)

    history = ok(world.client.get(f"/api/v1/stations/{station}/history", headers=admin))
    assert [h["receiver_id"] for h in history] == ["old-01", "new-01"]
    assert history[0]["end_at"] == history[1]["start_at"]
    assert history[1]["end_at"] is None
    assert "old-01" in history[1]["note"] and "sét đánh" in history[1]["note"]

    # A retired receiver is neither replaced again, nor provisioned, nor moved.
    again = world.client.post(f"/api/v1/stations/{station}/replace",
                              json={**body, "new": {"id": "new-02", "hardware_id": "h3"}}, headers=admin)
    assert again.status_code == 409
    assert world.client.post("/api/v1/receivers/old-01/provision", headers=admin).status_code == 409
    assert world.client.patch("/api/v1/receivers/old-01", json={"station_id": other}, headers=admin).status_code == 409

    # A replacement that fails half-way (the successor's hardware id is taken) changes nothing.
    ok(world.client.post("/api/v1/receivers", json={"id": "kp-01", "hardware_id": "h4", "station_id": other},
                         headers=admin), 201)
    failed = world.client.post(f"/api/v1/stations/{other}/replace", headers=admin,
                               json={"old_receiver_id": "kp-01", "new": {"id": "kp-02", "hardware_id": "h2"}})
    assert failed.status_code == 409
    assert ok(world.client.get("/api/v1/receivers/kp-01", headers=admin))["status"] == "active"
    assert world.client.get("/api/v1/receivers/kp-02", headers=admin).status_code == 404
    assert ok(world.client.get(f"/api/v1/stations/{other}/history", headers=admin))[0]["end_at"] is None

    # Replacing a receiver that is not at the station is refused.
    wrong = world.client.post(f"/api/v1/stations/{other}/replace",
                              json={**body, "old_receiver_id": "new-01"}, headers=admin)
    assert wrong.status_code == 422

    # Moving the new receiver to another station closes one assignment and opens another.
    ok(world.client.patch("/api/v1/receivers/new-01", json={"station_id": other}, headers=admin))
    assert ok(world.client.get(f"/api/v1/stations/{station}/history", headers=admin))[1]["end_at"] is not None
    [_, moved] = ok(world.client.get(f"/api/v1/stations/{other}/history", headers=admin))
    assert (moved["receiver_id"], moved["end_at"]) == ("new-01", None)

    ok(world.client.patch("/api/v1/receivers/new-01", json={"station_id": None}, headers=admin))
    with world.session() as session:
        open_rows = session.scalars(select(StationAssignment).where(StationAssignment.end_at.is_(None))).all()
        assert [a.receiver_id for a in open_rows] == ["kp-01"]

    # A station with a history is kept.
    assert world.client.delete(f"/api/v1/stations/{station}", headers=admin).status_code == 409


class _AccountsThatReadTheRegistry(RegistryOnlyAccounts):
    """Does what a broker does at a login: read the registry from its own connection. Runs
    only if the change is committed before the broker is told."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: list[tuple[str, str, bool]] = []

    def add_receiver(self, receiver_id: str, password: str) -> None:
        self.calls.append(("add", receiver_id, _verify(self.world, receiver_id, password)))

    def remove_receiver(self, receiver_id: str) -> None:
        with self.world.session() as session:
            status = service.get_receiver(session, receiver_id).status
        self.calls.append(("remove", receiver_id, status != "active"))


def test_the_broker_is_told_after_the_commit_through_the_outbox(world: World) -> None:
    accounts = _AccountsThatReadTheRegistry(world)
    dispatcher = OutboxDispatcher(world.runtime.sessions, broker_login_handlers(accounts))
    world.client.portal.call(dispatcher.start)
    world.runtime.outbox = dispatcher
    admin = world.user("admin", Role.ADMIN)
    station = _station(world, admin)
    ok(world.client.post("/api/v1/receivers", json={"id": "a", "hardware_id": "h1", "station_id": station},
                         headers=admin), 201)
    ok(world.client.post("/api/v1/receivers/a/provision", headers=admin), 201)
    ok(world.client.post(f"/api/v1/stations/{station}/replace",
                         json={"old_receiver_id": "a", "new": {"id": "b", "hardware_id": "h2"}}, headers=admin))
    ok(world.client.post("/api/v1/receivers/b/revoke", headers=admin))
    # Each answer came once the broker had the change (no waiting here).
    assert accounts.calls == [("add", "a", True), ("remove", "a", True), ("remove", "b", True)]
    world.client.portal.call(dispatcher.stop)
