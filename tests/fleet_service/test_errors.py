"""Bad requests and an unreachable database get clear, bilingual answers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.migrations import upgrade
from fleet_service.runtime import Runtime
from tests.fleet_service.ingest.test_database_outage import set_database_open
from tests.support.postgres import postgres_available, scratch_database


def admin_client(url: str):  # type: ignore[no-untyped-def]
    runtime = Runtime.from_settings(Settings(database_url=url, environment="test"))
    with session_scope(runtime.sessions) as s:
        admin = auth.create_user(s, "admin", role="admin")
        token = auth.issue_token(s, admin.id, "t")[1]
    return runtime, {"Authorization": f"Bearer {token}"}


def test_invalid_request_is_explained(sqlite_url):
    runtime, headers = admin_client(sqlite_url)
    with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
        response = client.post("/api/v1/regions", json={"name": "", "level": "xã"}, headers=headers)
        body = response.json()["error"]
        assert response.status_code == 422
        assert body["code"] == "invalid" and body["message"] == "Dữ liệu gửi lên không hợp lệ"
        assert body["details"][0]["where"] == "body.name"
    runtime.close()


@pytest.mark.postgres
def test_database_outage_is_a_clear_503_and_the_api_recovers():
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
    with scratch_database() as url:
        upgrade(url)
        runtime, headers = admin_client(url)
        name = url.rsplit("/", 1)[1]
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            assert client.get("/api/v1/regions", headers=headers).status_code == 200
            set_database_open(name, False)
            try:
                response = client.get("/api/v1/regions", headers=headers)
                assert response.status_code == 503
                assert response.headers["Retry-After"] == "30"
                assert "Cơ sở dữ liệu" in response.json()["error"]["message"]
            finally:
                set_database_open(name, True)
            assert client.get("/api/v1/regions", headers=headers).status_code == 200
        runtime.close()


def test_broker_outage_during_provisioning_is_a_clear_503_and_the_password_is_kept(tmp_path, sqlite_url):
    from tests.support.fleet import provision_fleet
    from tests.support.mosquitto_production import production_mosquitto

    with production_mosquitto(tmp_path / "mq") as broker:
        runtime, headers = admin_client(sqlite_url)
        provision_fleet(runtime.sessions, receivers=1)
        runtime.broker_accounts = broker.accounts
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            broker.server.stop()
            response = client.post("/api/v1/receivers/rx-0/provision", headers=headers)
            assert response.status_code == 503
            assert "broker MQTT" in response.json()["error"]["message"]
        # The registry kept the new credential: provisioning again once the broker is back works.
        from sqlalchemy import func, select

        from fleet_service.registry.models import ReceiverCredential

        with session_scope(runtime.sessions) as s:
            assert s.scalar(select(func.count()).select_from(ReceiverCredential)) == 2
        runtime.close()
