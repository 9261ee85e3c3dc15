"""A running API on a real database, with users made directly in the registry: shared by the
registry and auth tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.config import Settings
from fleet_service.runtime import Runtime


@dataclass
class World:
    client: TestClient
    runtime: Runtime

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A committed unit of work, to arrange data or look behind the API."""
        with self.runtime.sessions.begin() as session:
            yield session

    def user(self, username: str, role: Role, region_id: int | None = None, *,
             expires_at: datetime | None = None) -> dict[str, str]:
        """A token-only user; the headers that authenticate as them."""
        with self.session() as session:
            user = auth.create_user(session, username, role=role, region_id=region_id)
            _, token = auth.issue_token(session, user.id, "test", expires_at=expires_at)
        return {"Authorization": f"Bearer {token}"}


@contextmanager
def running_api(db_url: str) -> Iterator[World]:
    runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test"))
    try:
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            yield World(client, runtime)
    finally:
        runtime.close()


def ok(response, status: int = 200):  # type: ignore[no-untyped-def]
    """The JSON of a response that must have ``status``; the body in the failure message."""
    assert response.status_code == status, response.text
    return response.json()
