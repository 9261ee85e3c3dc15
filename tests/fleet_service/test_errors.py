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
        assert body["code"] == "invalid"
        assert body["message"] == "Dữ liệu gửi lên không hợp lệ — trường 'name': phải có ít nhất 1 ký tự"
        assert body["message_en"] == "The request is not valid — field 'name': must have at least 1 character(s)"
        assert body["details"] == [{"where": "body.name", "field": "name", "problem": "phải có ít nhất 1 ký tự",
                                    "problem_en": "must have at least 1 character(s)"}]
    runtime.close()


def _refusal(response, status: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"] and body["error"]["message_en"], body
    return body["error"]


def test_validation_names_the_field_without_pydantic_internals(sqlite_url):
    runtime, headers = admin_client(sqlite_url)
    with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
        def post(path: str, data: object) -> dict[str, str]:
            response = client.post(path, json=data, headers=headers)
            text = response.text
            # No validator or union names, no enum reprs: only the caller's own fields.
            for internal in ("tagged-union", "function-after", "<CommandOp", "CommandOp.", "model_attributes_type"):
                assert internal not in text, text
            return _refusal(response, 422)

        error = post("/api/v1/commands", {"target": {"fleet": True}, "op": "bogus"})
        assert error["message"] == ("Dữ liệu gửi lên không hợp lệ — trường 'op': phải là một trong: 'play', 'stop', "
                                    "'volume', 'reboot' hoặc 'config'")
        assert error["message_en"].endswith(
            "field 'op': must be one of: 'play', 'stop', 'volume', 'reboot' or 'config'")

        error = post("/api/v1/commands", {"target": {"fleet": True, "station": 1}, "op": "stop"})
        assert error["message"].endswith(
            "trường 'target': cần đúng một trong receiver, station, region hoặc fleet=true")
        assert error["message_en"].endswith(
            "field 'target': give exactly one of receiver, station, region, or fleet=true")

        error = post("/api/v1/commands", {"target": {"fleet": True}, "op": "play"})
        assert error["message"].endswith("nội dung gửi lên: lệnh 'play' cần trường 'url'")

        error = post("/api/v1/commands", {"target": {"fleet": True}, "op": "config",
                                          "settings": {"keepalive": 5, "colour": "red"}})
        assert "'settings.keepalive': phải lớn hơn hoặc bằng 30 (và 1 lỗi khác)" in error["message"]
        assert error["details"][1] == {"where": "body.settings.colour", "field": "settings.colour",
                                       "problem": "không phải là trường được nhận",
                                       "problem_en": "is not an accepted field"}

        error = post("/api/v1/schedules", {"name": "Sáng", "station": 1,
                                           "slots": [{"start": "05:30", "end": "06:00", "url": "http://r/1",
                                                      "days": ["monday"]}]})
        assert error["details"][0]["field"] == "slots[0].days[0]"
        assert "'mon', 'tue', 'wed', 'thu', 'fri', 'sat' hoặc 'sun'" in error["message"]

        # The values sent are never echoed back: one may be a password.
        password = "mật khẩu bí mật rất dài " * 60
        response = client.post("/api/v1/users", json={"username": "x", "role": "boss", "password": password},
                               headers=headers)
        assert {d["field"] for d in _refusal(response, 422)["details"]} == {"password", "role"}
        assert "bí mật" not in response.text

        error = _refusal(client.post("/api/v1/regions", content=b"{not json", headers={
            **headers, "Content-Type": "application/json"}), 422)
        assert error["message"].endswith("nội dung gửi lên: không phải JSON hợp lệ")

        # An id no row can have, and a time no calendar can convert, are refused as invalid.
        error = _refusal(client.get("/api/v1/regions/9223372036854775808", headers=headers), 422)
        assert error["details"][0]["where"] == "path.region_id"
        assert "tham số đường dẫn 'region_id'" in error["message"]
        error = _refusal(client.get("/api/v1/commands", params={"start": "0001-01-01T00:00:00"}, headers=headers), 422)
        assert error["message"] == "Thời điểm nằm ngoài phạm vi cho phép"
    runtime.close()


def test_the_frameworks_own_refusals_are_bilingual(sqlite_url):
    runtime, headers = admin_client(sqlite_url)
    with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
        error = _refusal(client.get("/api/v1/nowhere", headers=headers), 404)
        assert error == {"code": "not_found", "message": "Không có đường dẫn /api/v1/nowhere",
                         "message_en": "There is no path /api/v1/nowhere"}

        response = client.delete("/api/v1/regions", headers=headers)
        error = _refusal(response, 405)
        assert response.headers["Allow"] == "GET, POST"  # every method the path takes, not only the first route's
        assert error["message"] == "Đường dẫn /api/v1/regions không nhận phương thức DELETE (dùng: GET, POST)"

        response = client.post("/api/v1/auth/token", content=b"\xff\xfe",
                               headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert _refusal(response, 400)["code"] == "bad_request"

        response = client.get("/api/v1/regions")
        assert _refusal(response, 401)["code"] == "not_authenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    runtime.close()


@pytest.mark.postgres
def test_a_nul_character_is_refused_not_a_server_error():
    """PostgreSQL stores no NUL in text; SQLite does. Either way the answer is not a 500."""
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
    with scratch_database() as url:
        upgrade(url)
        runtime, headers = admin_client(url)
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            error = _refusal(client.post("/api/v1/regions", json={"name": "Cát\u0000Nê", "level": "xã"},
                                         headers=headers), 422)
            assert "NUL" in error["message"] and "NUL" in error["message_en"]
            _refusal(client.get("/api/v1/receivers/rx%00", headers=headers), 422)
            _refusal(client.post("/api/v1/auth/token", data={"username": "ad\u0000min", "password": "x"}), 422)
            # The refusals are in the audit log all the same, the NUL replaced.
            entries = client.get("/api/v1/audit", headers=headers).json()
            assert [e["action"] for e in entries] == ["sign_in", "create_region"]
            assert entries[0]["actor"] == "ad\ufffdmin"
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
