"""A request's unit of work is committed before its answer leaves."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.registry.models import Region
from fleet_service.runtime import Runtime


async def test_a_change_is_committed_before_the_answer_is_sent(db_url):
    runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test"))
    with session_scope(runtime.sessions) as s:
        admin = auth.create_user(s, "admin", role="admin")
        token = auth.issue_token(s, admin.id, "t")[1]
    app = create_app(runtime=runtime, mqtt=False)
    app.state.runtime = runtime
    body = json.dumps({"name": "Xã Yên Lãng", "level": "xã"}).encode()
    seen_at_answer: list[list[str]] = []

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):  # type: ignore[no-untyped-def]
        if message["type"] == "http.response.start":
            assert message["status"] == 201
            # What another process (another API, the CLI, Grafana) sees at this instant.
            def committed() -> list[str]:
                with session_scope(runtime.sessions) as other:
                    return list(other.scalars(select(Region.name)))
            seen_at_answer.append(await asyncio.to_thread(committed))

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/api/v1/regions", "raw_path": b"/api/v1/regions", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 5000), "server": ("loa.test", 80),
             "headers": [(b"host", b"loa.test"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {token}".encode())]}
    try:
        await app(scope, receive, send)
    finally:
        runtime.close()
    assert seen_at_answer == [["Xã Yên Lãng"]]
