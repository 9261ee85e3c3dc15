"""The firmware download endpoint through the real API, on SQLite and PostgreSQL: a receiver
offered a release fetches it with its own login, whole or by ranges (a cut download resumes),
and the bytes sent are counted; anyone else, a revoked login, a receiver not offered the
release and a withdrawn release are refused."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.firmware.schemas import version_order
from fleet_service.registry import service as registry
from fleet_service.rollouts import service as rollouts
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate, TargetIn
from fleet_service.runtime import Runtime
from fleet_service.scope import RegionScope
from tests.support.fleet import SmallFleet, provision_fleet

CONTENT = os.urandom(50_000)
MANIFEST = b'{"files":[{"length":50000,"path":"loa/app.mpy"}],"version":"1.4.0"}'
SIGNATURE = b'{"algorithm":"ed25519","key_id":"0000000000000000","signature":"AAAA"}'


@dataclass
class Setup:
    client: TestClient
    runtime: Runtime
    fleet: SmallFleet
    release_id: int

    def url(self, path: str = "loa/app.mpy") -> str:
        return f"/api/v1/firmware/download/{self.release_id}/{path}"

    def get(self, rid: str | None, path: str = "loa/app.mpy", password: str | None = None, **headers: str):  # type: ignore[no-untyped-def]
        auth_ = (rid, password or self.fleet.credentials[rid]) if rid else None
        return self.client.get(self.url(path), auth=auth_, headers=headers)

    def served(self) -> dict[str, tuple[int, int]]:
        with session_scope(self.runtime.sessions) as session:
            return {d.receiver_id: (d.bytes_served, d.requests) for d in session.scalars(select(FirmwareDownload))}


@pytest.fixture
def setup(db_url: str, tmp_path) -> Iterator[Setup]:
    runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test",
                                             firmware_cache_dir=str(tmp_path / "cache")))
    try:
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
            session.get(RolloutTarget, (rollout.id, "rx-0")).state = TargetState.OFFERED.value
            release_id = release.id
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            yield Setup(client, runtime, fleet, release_id)
    finally:
        runtime.close()


def test_an_offered_receiver_fetches_the_release_whole_and_by_ranges(setup: Setup) -> None:
    whole = setup.get("rx-0")
    assert whole.status_code == 200 and whole.content == CONTENT
    assert whole.headers["accept-ranges"] == "bytes"
    assert setup.get("rx-0", "manifest.json").content == MANIFEST
    assert setup.get("rx-0", "manifest.sig").content == SIGNATURE

    part = setup.get("rx-0", range="bytes=1000-1999")
    assert part.status_code == 206 and part.content == CONTENT[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(CONTENT)}"
    # A download cut at 30,000 bytes resumes from there.
    rest = setup.get("rx-0", range="bytes=30000-")
    assert rest.status_code == 206 and CONTENT[:30000] + rest.content == CONTENT
    assert setup.get("rx-0", range=f"bytes={len(CONTENT)}-").status_code == 416

    sent = len(CONTENT) + len(MANIFEST) + len(SIGNATURE) + 1000 + (len(CONTENT) - 30000)
    assert setup.served() == {"rx-0": (sent, 6)}
    assert setup.get("rx-0", "loa/nothing.mpy").status_code == 404
    assert setup.get("rx-0", "../../etc/passwd").status_code == 404


def test_only_a_receiver_offered_the_release_with_its_own_live_login_gets_it(setup: Setup) -> None:
    refused = setup.get(None)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert setup.get("rx-0", password="not-its-password").status_code == 401
    assert setup.get("rx-1", password=setup.fleet.credentials["rx-0"]).status_code == 401  # another's password
    with session_scope(setup.runtime.sessions) as session:
        user = auth.create_user(session, "kythuat", role=Role.ADMIN)
        token = auth.issue_token(session, user.id, "t")[1]
    assert setup.client.get(setup.url(), headers={"Authorization": f"Bearer {token}"}).status_code == 401

    pending = setup.get("rx-1")  # in the rollout, its wave not reached yet
    assert pending.status_code == 403 and pending.json()["error"]["code"] == "not_offered"
    assert setup.get("rx-2").status_code == 403  # not in the rollout

    with session_scope(setup.runtime.sessions) as session:
        registry.revoke(session, "rx-0")
    assert setup.get("rx-0").status_code == 401  # at once
    assert setup.served() == {}


def test_a_withdrawn_release_is_no_longer_served(setup: Setup) -> None:
    assert setup.get("rx-0", range="bytes=0-99").status_code == 206
    with session_scope(setup.runtime.sessions) as session:
        session.get(FirmwareRelease, setup.release_id).withdrawn_at = utcnow()
    gone = setup.get("rx-0", range="bytes=100-")
    assert gone.status_code == 410 and gone.json()["error"]["message"] != gone.json()["error"]["message_en"]
