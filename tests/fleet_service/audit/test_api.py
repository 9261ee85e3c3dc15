"""Every mutating API request lands in the audit log, carried out or refused: who, what,
when, from where; never a secret. Only admins of the whole fleet read it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_service.audit.models import AuditEntry
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.db import utcnow
from fleet_service.timefmt import LOCAL_ZONE
from tests.fleet_service.auth.world import World, ok
from tests.support.fleet import provision_fleet

ADMIN_PASSWORD = "mật khẩu quản trị dài"
NEW_USER_PASSWORD = "mật khẩu kỹ thuật viên"
WRONG_PASSWORD = "đoán bừa một mật khẩu"


def _rows(world: World) -> list[AuditEntry]:
    with world.session() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_actions_and_refusals_are_recorded_without_secrets(world: World) -> None:
    fleet = provision_fleet(world.runtime.sessions, receivers=2)
    with world.session() as session:
        auth.create_user(session, "admin", role=Role.ADMIN, password=ADMIN_PASSWORD)
    viewer = world.user("viewer", Role.VIEWER, fleet.region_id)
    # A second client, seen from another address.
    remote = TestClient(world.client.app, client=("203.0.113.7", 51000))
    before = utcnow()

    signed_in = ok(remote.post("/api/v1/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}))
    admin = {"Authorization": f"Bearer {signed_in['access_token']}"}
    assert remote.post("/api/v1/auth/token", data={"username": "admin", "password": WRONG_PASSWORD}).status_code == 401
    credential = ok(remote.post("/api/v1/receivers/rx-0/provision", headers=admin), 201)
    ok(world.client.post("/api/v1/receivers/rx-1/revoke", headers=admin))
    created = ok(world.client.post("/api/v1/users", headers=admin, json={
        "username": "kythuat", "role": "technician", "region_id": fleet.region_id, "password": NEW_USER_PASSWORD}), 201)
    issued = ok(world.client.post("/api/v1/auth/tokens", json={"name": "grafana"}, headers=admin), 201)
    region = {"name": "Cát Nê", "level": "xã"}
    assert world.client.post("/api/v1/regions", json=region, headers=viewer).status_code == 403
    assert world.client.post("/api/v1/regions", json=region).status_code == 401
    assert world.client.delete("/api/v1/stations/999", headers=admin).status_code == 404
    assert world.client.delete("/api/v1/regions", headers=admin).status_code == 405
    ok(world.client.get("/api/v1/regions", headers=admin))  # reads are not recorded
    after = utcnow()

    rows = _rows(world)
    seen = [(r.actor, r.action, r.target, r.status, r.outcome, r.client) for r in rows]
    assert seen == [
        ("admin", "sign_in", None, 200, "ok", "203.0.113.7"),
        ("admin", "sign_in", None, 401, "refused", "203.0.113.7"),
        ("admin", "provision_receiver", "receiver_id=rx-0", 201, "ok", "203.0.113.7"),
        ("admin", "revoke_receiver", "receiver_id=rx-1", 200, "ok", "testclient"),
        ("admin", "create_user", None, 201, "ok", "testclient"),
        ("admin", "create_token", None, 201, "ok", "testclient"),
        ("viewer", "create_region", None, 403, "refused", "testclient"),
        (None, "create_region", None, 401, "refused", "testclient"),
        ("admin", "delete_station", "station_id=999", 404, "refused", "testclient"),
        (None, "DELETE /api/v1/regions", None, 405, "refused", "testclient"),
    ]
    assert all(r.source == "api" for r in rows)
    assert [(r.method, r.path) for r in rows[2:4]] == [("POST", "/api/v1/receivers/rx-0/provision"),
                                                       ("POST", "/api/v1/receivers/rx-1/revoke")]
    for row in rows:
        assert row.at.tzinfo is not None and before <= row.at <= after

    # No password, token or MQTT credential in any column of any row.
    stored = repr([[getattr(r, c.key) for c in AuditEntry.__table__.columns] for r in rows])
    for secret in (ADMIN_PASSWORD, WRONG_PASSWORD, NEW_USER_PASSWORD, credential["mqtt_password"],
                   signed_in["access_token"], issued["token"], viewer["Authorization"].split()[1]):
        assert secret not in stored
    assert created["username"] == "kythuat"


def test_only_admins_of_the_whole_fleet_read_the_log(world: World) -> None:
    fleet = provision_fleet(world.runtime.sessions, receivers=2)
    admin = world.user("admin", Role.ADMIN)
    for name, role in (("viewer", Role.VIEWER), ("operator", Role.OPERATOR), ("tech", Role.TECHNICIAN)):
        headers = world.user(name, role, fleet.region_id)
        refused = world.client.get("/api/v1/audit", headers=headers)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert refused.json()["error"]["message"].startswith("Vai trò")
    scoped_admin = world.user("admin.x", Role.ADMIN, fleet.region_id)
    refused = world.client.get("/api/v1/audit", headers=scoped_admin)
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == "Chỉ quản trị viên toàn mạng được xem nhật ký thao tác"
    assert world.client.get("/api/v1/audit").status_code == 401

    ok(world.client.post("/api/v1/receivers/rx-0/revoke", headers=admin))
    ok(world.client.post("/api/v1/receivers/rx-1/revoke", headers=admin))
    assert world.client.post("/api/v1/receivers/rx-0/revoke",
                             headers=world.user("v2", Role.VIEWER, fleet.region_id)).status_code == 403

    entries = ok(world.client.get("/api/v1/audit", headers=admin))
    assert [(e["actor"], e["target"]) for e in entries] == [
        ("v2", "receiver_id=rx-0"), ("admin", "receiver_id=rx-1"), ("admin", "receiver_id=rx-0")]  # newest first
    assert entries[0]["outcome"] == "refused" and entries[0]["status"] == 403

    def audit(**params: object) -> list[dict]:
        return ok(world.client.get("/api/v1/audit", params=params, headers=admin))

    assert [e["target"] for e in audit(actor="admin")] == ["receiver_id=rx-1", "receiver_id=rx-0"]
    assert len(audit(action="revoke_receiver")) == 3 and audit(action="provision_receiver") == []
    assert [e["target"] for e in audit(limit=1, offset=1)] == ["receiver_id=rx-1"]
    at = datetime.fromisoformat(entries[1]["at"])
    # A time without a zone is Vietnam time.
    local = at.astimezone(LOCAL_ZONE).replace(tzinfo=None)
    assert [e["id"] for e in audit(since=local.isoformat())] == [entries[0]["id"], entries[1]["id"]]
    assert [e["id"] for e in audit(until=local.isoformat())] == [entries[2]["id"]]
    assert audit(since=(datetime.now(UTC) + timedelta(minutes=1)).isoformat()) == []
    bad = world.client.get("/api/v1/audit", params={"limit": 0}, headers=admin)
    assert bad.status_code == 422 and "'limit'" in bad.json()["error"]["message"]
