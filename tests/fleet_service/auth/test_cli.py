from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest
from typer.testing import CliRunner

from fleet_service.cli import app
from fleet_service.config import get_settings
from tests.fleet_service.auth.world import ok, running_api

Loa = Callable[..., str]


@pytest.fixture
def loa(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loa]:
    monkeypatch.setenv("LOA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, code: int = 0, input: str | None = None) -> str:
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    yield run
    get_settings.cache_clear()


def test_admin_bootstrap_users_and_tokens(loa: Loa, db_url: str) -> None:
    # The first admin, with the password typed twice at the prompt.
    out = loa("users", "create", "admin", "--role", "admin", input="mật khẩu quản trị\nmật khẩu quản trị\n")
    assert "quản trị / admin" in out and "toàn mạng / whole fleet" in out
    assert "10" in loa("users", "create", "weak", "--role", "admin", "--password", "short", code=1)
    assert "region" in loa("users", "create", "op", "--role", "operator", "--token-only", code=1)

    region_id = re.search(r"created region (\d+)", loa("regions", "create", "Cát Nê", "--level", "xã")).group(1)
    loa("users", "create", "op.catne", "--role", "operator", "--region", region_id, "--password", "mật khẩu vận hành")
    listing = loa("users", "list")
    assert "op.catne" in listing and "vận hành / operator" in listing and "Cát Nê" in listing

    out = loa("tokens", "create", "op.catne", "--name", "grafana", "--expires-days", "30")
    token = out.splitlines()[1].strip()
    token_id = re.search(r"ID (\d+)", out).group(1)
    assert "grafana" in loa("tokens", "list", "--user", "op.catne") and token not in loa("tokens", "list")

    with running_api(db_url) as world:
        headers = {"Authorization": f"Bearer {token}"}
        assert ok(world.client.get("/api/v1/auth/me", headers=headers))["username"] == "op.catne"
        signed_in = world.client.post("/api/v1/auth/token", data={"username": "admin", "password": "mật khẩu quản trị"})
        assert signed_in.status_code == 200

        loa("users", "disable", "op.catne")
        assert world.client.get("/api/v1/auth/me", headers=headers).status_code == 401
        loa("users", "enable", "op.catne")
        assert world.client.get("/api/v1/auth/me", headers=headers).status_code == 200
        loa("tokens", "revoke", token_id)
        assert world.client.get("/api/v1/auth/me", headers=headers).status_code == 401
        assert "đã thu hồi / revoked" in loa("tokens", "list")

        loa("users", "password", "admin", "--password", "mật khẩu mới hơn")
        old = world.client.post("/api/v1/auth/token", data={"username": "admin", "password": "mật khẩu quản trị"})
        assert old.status_code == 401
    assert "not found" in loa("users", "disable", "nobody", code=1)
