from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select

from fleet_service.auth import service
from fleet_service.auth.models import ApiToken, Role, User
from fleet_service.db import utcnow
from tests.fleet_service.auth.world import World, ok

PASSWORD = "mật khẩu dài đủ 10"


def test_sign_in_issues_a_bearer_token_and_refuses_wrong_credentials(world: World) -> None:
    with world.session() as session:
        service.create_user(session, "admin", role=Role.ADMIN, password=PASSWORD)

    wrong = world.client.post("/api/v1/auth/token", data={"username": "admin", "password": "wrong password"})
    unknown = world.client.post("/api/v1/auth/token", data={"username": "nobody", "password": PASSWORD})
    for r in (wrong, unknown):
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["message"] == "Sai tên đăng nhập hoặc mật khẩu"
        assert r.json()["error"]["message_en"] == "Wrong username or password"

    answer = ok(world.client.post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD}))
    assert answer["token_type"] == "bearer"
    token = answer["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    me = ok(world.client.get("/api/v1/auth/me", headers=headers))
    assert (me["username"], me["role"], me["region_path"]) == ("admin", "admin", None)

    with world.session() as session:
        row = session.scalar(select(ApiToken))
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        assert timedelta(hours=11) < row.expires_at - utcnow() <= timedelta(hours=12)
        assert row.last_used_at is not None
        user = session.scalar(select(User))
        assert user.password_hash.startswith("scrypt$") and PASSWORD not in user.password_hash

    # The OpenAPI description points Swagger UI's "Authorize" at the token endpoint.
    schemes = world.client.get("/openapi.json").json()["components"]["securitySchemes"]
    assert any(s.get("flows", {}).get("password", {}).get("tokenUrl") == "/api/v1/auth/token" for s in schemes.values())


def test_missing_expired_revoked_and_disabled_are_refused(world: World) -> None:
    r = world.client.get("/api/v1/regions")
    assert r.status_code == 401 and "Bearer" in r.json()["error"]["message_en"]
    r = world.client.get("/api/v1/regions", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401 and "invalid, expired or revoked" in r.json()["error"]["message_en"]

    expired = world.user("old", Role.ADMIN, expires_at=utcnow() - timedelta(seconds=1))
    assert world.client.get("/api/v1/regions", headers=expired).status_code == 401

    admin = world.user("admin", Role.ADMIN, expires_at=utcnow() + timedelta(days=1))
    ok(world.client.get("/api/v1/regions", headers=admin))

    # A named token for a script: shown once, listed without the token, revocable.
    issued = ok(world.client.post("/api/v1/auth/tokens", json={"name": "grafana", "expires_in_days": 30},
                                  headers=admin), 201)
    script = {"Authorization": f"Bearer {issued['token']}"}
    ok(world.client.get("/api/v1/regions", headers=script))
    listed = ok(world.client.get("/api/v1/auth/tokens", headers=admin))
    assert [t["name"] for t in listed] == ["test", "grafana"]
    assert issued["token"] not in str(listed)
    assert listed[1]["last_used_at"] is not None

    ok(world.client.delete(f"/api/v1/auth/tokens/{issued['id']}", headers=admin))
    assert world.client.get("/api/v1/regions", headers=script).status_code == 401
    ok(world.client.get("/api/v1/regions", headers=admin))

    # Someone else's token cannot be revoked by a non-admin; it looks absent.
    viewer = world.user("viewer", Role.VIEWER, ok(world.client.post(
        "/api/v1/regions", json={"name": "Cát Nê", "level": "xã"}, headers=admin), 201)["id"])
    assert world.client.delete(f"/api/v1/auth/tokens/{listed[0]['id']}", headers=viewer).status_code == 404

    # Disabling a user stops their tokens at once; enabling brings them back.
    ok(world.client.post("/api/v1/users/viewer/disable", headers=admin))
    r = world.client.get("/api/v1/regions", headers=viewer)
    assert r.status_code == 401 and r.json()["error"]["message_en"] == "This account is disabled"
    ok(world.client.post("/api/v1/users/viewer/enable", headers=admin))
    assert len(ok(world.client.get("/api/v1/regions", headers=viewer))) == 1


def test_users_are_managed_by_admins_and_scoped(world: World) -> None:
    admin = world.user("admin", Role.ADMIN)
    commune = ok(world.client.post("/api/v1/regions", json={"name": "Cát Nê", "level": "xã"}, headers=admin), 201)

    no_scope = world.client.post("/api/v1/users", json={"username": "op", "role": "operator"}, headers=admin)
    assert no_scope.status_code == 422 and "region" in no_scope.json()["error"]["message_en"]
    short = world.client.post("/api/v1/users", headers=admin, json={
        "username": "op", "role": "operator", "region_id": commune["id"], "password": "short"})
    assert short.status_code == 422 and "10 characters" in short.json()["error"]["message_en"]
    bad_name = world.client.post("/api/v1/users", headers=admin, json={
        "username": "Nguyễn Văn A", "role": "operator", "region_id": commune["id"]})
    assert bad_name.status_code == 422

    created = ok(world.client.post("/api/v1/users", headers=admin, json={
        "username": "op.catne", "role": "operator", "region_id": commune["id"], "password": PASSWORD,
        "full_name": "Nguyễn Văn A"}), 201)
    assert created["role"] == "operator" and "password" not in str(created)
    dup = world.client.post("/api/v1/users", headers=admin, json={"username": "op.catne", "role": "admin"})
    assert dup.status_code == 409

    token = ok(world.client.post("/api/v1/auth/token", data={"username": "op.catne", "password": PASSWORD}))
    op = {"Authorization": f"Bearer {token['access_token']}"}
    me = ok(world.client.get("/api/v1/auth/me", headers=op))
    assert (me["region_id"], me["region_path"]) == (commune["id"], commune["path"])
    assert world.client.get("/api/v1/users", headers=op).status_code == 403
    assert world.client.post("/api/v1/users", headers=op, json={
        "username": "x", "role": "admin"}).status_code == 403
    assert [u["username"] for u in ok(world.client.get("/api/v1/users", headers=admin))] == ["admin", "op.catne"]

    # Disabled users cannot sign in.
    ok(world.client.post("/api/v1/users/op.catne/disable", headers=admin))
    r = world.client.post("/api/v1/auth/token", data={"username": "op.catne", "password": PASSWORD})
    assert r.status_code == 401
