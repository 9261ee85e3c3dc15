"""A release of one file offered to rx-0 (rx-1 in the rollout, its wave not reached; rx-2
not in it), and API processes on its database, each with its download listener on a port of
its own (fleet_service/downloads/listener.py)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.downloads import serving
from fleet_service.downloads.listener import DownloadListener
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.firmware.schemas import version_order
from fleet_service.rollouts import service as rollouts
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate, TargetIn
from fleet_service.runtime import Runtime
from fleet_service.scope import RegionScope
from tests.support.fleet import SmallFleet, provision_fleet

CONTENT = os.urandom(150_000)  # larger than one chunk of the response
MANIFEST = b'{"files":[{"length":150000,"path":"loa/app.mpy"}],"version":"1.4.0"}'
SIGNATURE = b'{"algorithm":"ed25519","key_id":"0000000000000000","signature":"AAAA"}'
ETAG = f'"{hashlib.sha256(CONTENT).hexdigest()}"'


@dataclass
class Api:
    """One API process: its own runtime (engine) and app on the shared database, and its
    download listener."""

    client: TestClient
    runtime: Runtime
    fleet: SmallFleet
    release_id: int

    @property
    def downloads(self) -> serving.Downloads:
        return self.client.app.state.downloads  # type: ignore[attr-defined]

    @property
    def listener(self) -> DownloadListener:
        return self.client.app.state.download_listener  # type: ignore[attr-defined]

    def url(self, path: str = "loa/app.mpy") -> str:
        return f"/api/v1/firmware/download/{self.release_id}/{path}"

    def get(self, rid: str | None, path: str = "loa/app.mpy", password: str | None = None, **headers: str):  # type: ignore[no-untyped-def]
        auth_ = (rid, password or self.fleet.credentials[rid]) if rid else None
        return self.client.get(self.url(path), auth=auth_, headers=headers)

    def served(self) -> dict[str, tuple[int, int]]:
        """What the database holds, once this process has written what it counted."""
        self.downloads.served.flush(self.runtime.sessions)
        return stored_counts(self.runtime)


def stored_counts(runtime: Runtime) -> dict[str, tuple[int, int]]:
    with session_scope(runtime.sessions) as session:
        return {d.receiver_id: (d.bytes_served, d.requests) for d in session.scalars(select(FirmwareDownload))}


@dataclass
class Setup:
    stack: ExitStack
    db_url: str
    fleet: SmallFleet
    release_id: int
    rollout_id: int

    def api(self) -> Api:
        """Another API process on the same database, its download listener on a free port."""
        runtime = Runtime.from_settings(Settings(database_url=self.db_url, environment="test", download_port=0,
                                                 download_host="127.0.0.1"))
        self.stack.callback(runtime.close)
        client = self.stack.enter_context(TestClient(create_app(runtime=runtime, mqtt=False)))
        return Api(client, runtime, self.fleet, self.release_id)


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    with ExitStack() as stack:
        runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test"))
        stack.callback(runtime.close)
        fleet = provision_fleet(runtime.sessions, receivers=3, stations=1)
        with session_scope(runtime.sessions) as session:
            release = FirmwareRelease(
                version="1.4.0", version_order=version_order("1.4.0"), hardware="esp32-a7670", min_version="1.0.0",
                mpy_version="6.3", file_count=1, total_length=len(CONTENT), manifest=MANIFEST,
                manifest_sha256=hashlib.sha256(MANIFEST).hexdigest(), signature=SIGNATURE, key_id="0" * 16,
                uploader_name="kythuat", uploaded_at=utcnow())
            session.add(release)
            session.flush()
            session.add(FirmwareReleaseFile(release_id=release.id, path="loa/app.mpy", length=len(CONTENT),
                                            sha256=hashlib.sha256(CONTENT).hexdigest(), content=CONTENT))
            rollout = rollouts.create_rollout(session, RolloutCreate(
                name="1.4.0", release_id=release.id, target=TargetIn(receiver_ids=["rx-0", "rx-1"])),
                rollouts.Actor(None, "admin", RegionScope()))
            session.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == rollout.id,
                                                        RolloutTarget.receiver_id == "rx-0")
                            .values(state=TargetState.OFFERED.value))
            release_id, rollout_id = release.id, rollout.id
        yield Setup(stack, db_url, fleet, release_id, rollout_id)


@pytest.fixture
def api(setup: Setup) -> Api:
    return setup.api()


def admin_token(api: Api) -> str:
    with session_scope(api.runtime.sessions) as session:
        user = auth.create_user(session, "kythuat", role=Role.ADMIN)
        return auth.issue_token(session, user.id, "t")[1]
