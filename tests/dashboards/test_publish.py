"""``loa dashboards publish`` against a small HTTP server that answers the Grafana HTTP API calls
grafana-client makes (folders, dashboards, datasources), with Grafana's status codes and
bodies. It is a stand-in with the recorded API shape, not Grafana: no Grafana server can run
here (docs/dashboards.md says so)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

import dashboards
from fleet_service.cli import app
from tests.support.ports import free_port

TOKEN = "glsa_test_token"
SECRETS = {"LOA_GRAFANA_INFLUX_URL": "http://influxdb:8086", "LOA_GRAFANA_INFLUX_USER": "grafana",
           "LOA_GRAFANA_INFLUX_PASSWORD": "influx-secret", "LOA_GRAFANA_POSTGRES_HOST": "postgres:5432",
           "LOA_GRAFANA_POSTGRES_USER": "grafana_reader", "LOA_GRAFANA_POSTGRES_PASSWORD": "pg-secret",
           "LOA_GRAFANA_POSTGRES_SSLMODE": "disable"}


@dataclass
class GrafanaState:
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)


class GrafanaAPI(BaseHTTPRequestHandler):
    state: GrafanaState

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        self.state.requests.append((method, self.path))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"message": "invalid API key"})
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else {}
        path = self.path.split("?")[0]
        state = self.state
        if method == "GET" and path.startswith("/api/folders/"):
            uid = path.rsplit("/", 1)[1]
            return self._reply(200, state.folders[uid]) if uid in state.folders else \
                self._reply(404, {"message": "folder not found", "status": "not-found"})
        if method == "POST" and path == "/api/folders":
            if body.get("uid") in state.folders:
                return self._reply(409, {"message": "a folder with the same uid already exists"})
            state.folders[body["uid"]] = {"id": len(state.folders) + 1, "uid": body["uid"], "title": body["title"]}
            return self._reply(200, state.folders[body["uid"]])
        if method == "POST" and path == "/api/dashboards/db":
            model = body["dashboard"]
            if body.get("folderUid") not in state.folders:
                return self._reply(400, {"message": "folder not found"})
            if model["uid"] in state.dashboards and not body.get("overwrite"):
                return self._reply(412, {"message": "A dashboard with the same uid already exists", "status": "name-exists"})
            version = state.dashboards.get(model["uid"], {}).get("version", 0) + 1
            state.dashboards[model["uid"]] = {"model": model, "folderUid": body["folderUid"], "version": version}
            return self._reply(200, {"status": "success", "uid": model["uid"], "version": version})
        if path.startswith("/api/datasources/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in state.datasources:
                return self._reply(404, {"message": "Data source not found"})
            if method == "GET":
                return self._reply(200, state.datasources[uid])
            if method == "PUT":
                state.datasources[uid] = body
                return self._reply(200, {"message": "Datasource updated", "datasource": body})
        if method == "POST" and path == "/api/datasources":
            if body["uid"] in state.datasources:
                return self._reply(409, {"message": "data source with the same uid already exists"})
            state.datasources[body["uid"]] = body
            return self._reply(200, {"message": "Datasource added", "datasource": body})
        return self._reply(404, {"message": "Not found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


@pytest.fixture
def grafana() -> Iterator[tuple[str, GrafanaState]]:
    state = GrafanaState()
    handler = type("Handler", (GrafanaAPI,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, ["dashboards", "publish", *args], env=env)


def test_publish_creates_the_folder_and_every_dashboard_and_is_idempotent(grafana):
    url, state = grafana
    first = run("--url", url, "--token", TOKEN)
    assert first.exit_code == 0, first.output
    assert state.folders == {"loa": {"id": 1, "uid": "loa", "title": "Loa"}}
    assert set(state.dashboards) == set(dashboards.BUILDERS)
    for uid, stored in state.dashboards.items():
        assert stored["folderUid"] == "loa"
        assert stored["model"] == {**dashboards.render(uid), "id": None}
    assert f"published {len(dashboards.BUILDERS)} dashboards" in first.output and "folder created" in first.output

    before = json.dumps([state.folders, {k: v["model"] for k, v in state.dashboards.items()}], sort_keys=True)
    second = run("--url", url, "--token", TOKEN)
    assert second.exit_code == 0, second.output
    assert "folder created" not in second.output
    assert json.dumps([state.folders, {k: v["model"] for k, v in state.dashboards.items()}], sort_keys=True) == before
    assert {v["version"] for v in state.dashboards.values()} == {2}  # overwritten, not duplicated
    assert not any(method == "POST" and path == "/api/datasources" for method, path in state.requests)


def test_publish_with_datasources_creates_then_updates_them_with_secrets_from_the_environment(grafana):
    url, state = grafana
    result = run("--url", url, "--token", TOKEN, "--datasources", env=SECRETS)
    assert result.exit_code == 0, result.output
    influx, postgres = state.datasources["loa-influxdb"], state.datasources["loa-postgres"]
    assert influx["type"] == "influxdb" and influx["jsonData"]["version"] == "InfluxQL"
    assert influx["jsonData"]["dbName"] == "loa" and influx["secureJsonData"]["password"] == "influx-secret"
    assert postgres["type"] == "grafana-postgresql-datasource" and postgres["url"] == "postgres:5432"
    assert postgres["secureJsonData"]["password"] == "pg-secret" and "editable" not in postgres
    again = run("--url", url, "--token", TOKEN, "--datasources", env={**SECRETS, "LOA_GRAFANA_POSTGRES_PASSWORD": "rotated"})
    assert again.exit_code == 0, again.output
    assert "datasource updated: loa-postgres" in again.output
    assert state.datasources["loa-postgres"]["secureJsonData"]["password"] == "rotated"


def test_a_missing_secret_is_refused_before_anything_is_sent(grafana):
    url, state = grafana
    env = {k: v for k, v in SECRETS.items() if k != "LOA_GRAFANA_INFLUX_PASSWORD"}
    result = run("--url", url, "--token", TOKEN, "--datasources", env={**env, "LOA_GRAFANA_INFLUX_PASSWORD": None})
    assert result.exit_code == 1
    assert "Thiếu biến môi trường" in result.output and "LOA_GRAFANA_INFLUX_PASSWORD" in result.output
    assert "environment variables missing" in result.output
    assert state.requests == []


def test_wrong_token_gets_a_clear_bilingual_error(grafana):
    url, state = grafana
    result = run("--url", url, "--token", "wrong")
    assert result.exit_code == 1
    assert "Grafana từ chối mã truy cập (401)" in result.output
    assert "Grafana refused the token (401)" in result.output
    assert state.dashboards == {} and state.folders == {}


def test_unreachable_grafana_gets_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}"
    result = run("--url", url, "--token", TOKEN)
    assert result.exit_code == 1
    assert f"Không kết nối được Grafana tại {url}" in result.output
    assert f"cannot reach Grafana at {url}" in result.output
