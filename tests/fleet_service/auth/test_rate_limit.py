"""Sign-in attempts are limited per client address and per username: past the limit the
answer is 429 with Retry-After, before any password is hashed, and the refusal is audited."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_service.app import create_app
from fleet_service.audit.models import AuditEntry
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.runtime import Runtime

PASSWORD = "mật khẩu đủ dài 10"


@pytest.fixture
def runtime(db_url: str) -> Iterator[Runtime]:
    settings = Settings(database_url=db_url, environment="test", api_login_attempts_per_address=5,
                        api_login_attempts_per_user=3)
    runtime = Runtime.from_settings(settings)
    with session_scope(runtime.sessions) as session:
        auth.create_user(session, "admin", role=Role.ADMIN, password=PASSWORD)
    yield runtime
    runtime.close()


def _client(app, address: str) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(app, client=(address, 40000))


def _sign_in(client: TestClient, username: str, password: str = "sai mật khẩu rồi"):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    response = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    return response, time.perf_counter() - start


def _assert_limited(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    error = response.json()["error"]
    assert error["code"] == "too_many_requests"
    assert error["message"].startswith("Quá nhiều lần đăng nhập; hãy thử lại sau ")
    assert error["message_en"].startswith("Too many sign-in attempts; try again in ")


def test_a_burst_from_one_address_is_refused_before_hashing(runtime: Runtime) -> None:
    app = create_app(runtime=runtime, mqtt=False)
    with TestClient(app):  # runs the lifespan
        attacker = _client(app, "198.51.100.9")
        # Different usernames: only the per-address limit (5) applies.
        hashed = [_sign_in(attacker, f"user{i}") for i in range(5)]
        assert [r.status_code for r, _ in hashed] == [401] * 5
        refused, elapsed = _sign_in(attacker, "admin", PASSWORD)  # even the right password
        _assert_limited(refused)
        # No scrypt was run for it: it takes a fraction of an attempt that was checked.
        assert elapsed < min(t for _, t in hashed) / 2, (elapsed, [t for _, t in hashed])

        # Another address is not affected.
        ok = _client(app, "192.0.2.20").post("/api/v1/auth/token", data={"username": "admin", "password": PASSWORD})
        assert ok.status_code == 200

    with runtime.sessions() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.status == 429)).one()
        assert (entry.actor, entry.action, entry.outcome, entry.client) == ("admin", "sign_in", "refused",
                                                                            "198.51.100.9")


def test_one_username_tried_from_two_addresses(runtime: Runtime) -> None:
    app = create_app(runtime=runtime, mqtt=False)
    with TestClient(app):
        first, second = _client(app, "198.51.100.1"), _client(app, "198.51.100.2")
        assert _sign_in(first, "admin")[0].status_code == 401
        assert _sign_in(first, "admin")[0].status_code == 401
        assert _sign_in(second, "admin")[0].status_code == 401
        # The username's 3 attempts are spent, from wherever they come.
        _assert_limited(_sign_in(second, "admin", PASSWORD)[0])
        _assert_limited(_sign_in(first, "admin", PASSWORD)[0])
        # The addresses themselves may still try other accounts.
        assert _sign_in(second, "someone.else")[0].status_code == 401

    with runtime.sessions() as session:
        refused = session.scalars(select(AuditEntry).where(AuditEntry.status == 429).order_by(AuditEntry.id)).all()
        assert [(e.actor, e.client) for e in refused] == [("admin", "198.51.100.2"), ("admin", "198.51.100.1")]
