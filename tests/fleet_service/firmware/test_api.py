"""Firmware releases through the real API, on SQLite and PostgreSQL: a signed bundle is
stored; unsigned, foreign-signed, tampered, malformed and duplicate ones are refused with a
bilingual error naming what is wrong, and leave nothing behind; two trusted keys (a key being
replaced) are both accepted; withdrawal is recorded for rollouts; only engineers and admins."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_service.app import create_app
from fleet_service.audit.models import AuditEntry
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.config import Settings
from fleet_service.firmware import bundle, keys
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.outbox.models import OutboxEntry
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.runtime import Runtime
from tests.fleet_service.firmware.conftest import HARDWARE, VERSION, KeyPair, release_of, set_manifest

RELEASES = "/api/v1/firmware/releases"
TAR = {"Content-Type": bundle.TAR_CONTENT_TYPE}


@dataclass
class Service:
    client: TestClient
    runtime: Runtime
    admin: dict[str, str]
    technician: dict[str, str]
    operator: dict[str, str]
    viewer: dict[str, str]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.runtime.sessions.begin() as session:
            yield session

    def upload(self, bundle_dir: Path | bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        body = bundle_dir if isinstance(bundle_dir, bytes) else bundle.pack(bundle_dir)
        return self.client.post(RELEASES, content=body, headers={**TAR, **(headers or self.technician)})

    def stored(self) -> tuple[int, int]:
        with self.session() as session:
            return (session.scalar(select(func.count()).select_from(FirmwareRelease)) or 0,
                    session.scalar(select(func.count()).select_from(FirmwareReleaseFile)) or 0)


@pytest.fixture
def service(db_url: str, signing_keys: dict[str, KeyPair]) -> Iterator[Service]:
    # Two trusted keys: the current one by its .pub file, the next one as base64.
    settings = Settings(database_url=db_url, environment="test",
                        firmware_keys=f"{signing_keys['current'].public},{signing_keys['next'].base64}")
    runtime = Runtime.from_settings(settings)
    try:
        with runtime.sessions.begin() as session:
            region = registry.create_region(session, RegionCreate(name="Đại Từ", level="huyện"))
            tokens = {}
            for name, role, region_id in (("admin", Role.ADMIN, None), ("kythuat", Role.TECHNICIAN, region.id),
                                          ("vanhanh", Role.OPERATOR, region.id), ("xem", Role.VIEWER, region.id)):
                user = auth.create_user(session, name, role=role, region_id=region_id)
                tokens[name] = {"Authorization": f"Bearer {auth.issue_token(session, user.id, 't')[1]}"}
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            yield Service(client, runtime, tokens["admin"], tokens["kythuat"], tokens["vanhanh"], tokens["xem"])
    finally:
        runtime.close()


def _refusal(response, status: int = 422) -> dict[str, str]:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["message_en"] and error["message"] != error["message_en"]
    return error


def test_a_signed_bundle_is_stored_as_it_came(service: Service, bundle_copy, signing_keys) -> None:
    signed = bundle_copy(signing_keys["current"])
    response = service.upload(signed)
    assert response.status_code == 201, response.text
    release = response.json()
    manifest = json.loads((signed / "manifest.json").read_bytes())
    assert (release["version"], release["hardware"], release["min_version"]) == (VERSION, HARDWARE, "1.0.0")
    assert release["key_id"] == signing_keys["current"].key_id and release["uploaded_by"] == "kythuat"
    assert release["files"] == len(manifest["files"]) and release["total_length"] == manifest["total_length"]
    assert release["file_list"] == manifest["files"] and not release["withdrawn"]

    with service.session() as session:
        row = session.scalar(select(FirmwareRelease))
        assert row is not None
        assert row.manifest == (signed / "manifest.json").read_bytes()
        assert row.signature == (signed / "manifest.sig").read_bytes()
        contents = {path: content for path, content in
                    session.execute(select(FirmwareReleaseFile.path, FirmwareReleaseFile.content))}
    assert contents == {f["path"]: (signed / f["path"]).read_bytes() for f in manifest["files"]}

    listed = service.client.get(RELEASES, headers=service.admin).json()
    assert [(r["id"], r["version"]) for r in listed] == [(release["id"], VERSION)]
    shown = service.client.get(f"{RELEASES}/{VERSION}", headers=service.technician).json()
    assert shown == release
    assert service.client.get(f"{RELEASES}/9.9.9", headers=service.admin).status_code == 404

    # The other trusted key (the one replacing it) is accepted too.
    other = release_of(bundle_copy(), signing_keys["next"], version="1.5.0")
    accepted = service.upload(other, service.admin)
    assert accepted.status_code == 201 and accepted.json()["key_id"] == signing_keys["next"].key_id
    listed = service.client.get(RELEASES, headers=service.admin).json()
    assert [r["version"] for r in listed] == ["1.5.0", VERSION]  # newest first

    with service.session() as session:
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "upload_firmware_release")
                                .order_by(AuditEntry.id)).all()
    assert [(a.actor, a.outcome, a.target) for a in audit] == [
        ("kythuat", "ok", f"release_id={release['id']}, version={VERSION}, hardware={HARDWARE}"),
        ("admin", "ok", f"release_id={accepted.json()['id']}, version=1.5.0, hardware={HARDWARE}")]


def _tampered_file(copy: Path) -> Path:
    target = copy / "loa" / "app.mpy"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    target.write_bytes(bytes(data))
    return copy


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def test_refused_bundles_leave_nothing_behind(service: Service, bundle_copy, signing_keys, tmp_path: Path) -> None:
    current, stranger = signing_keys["current"], signing_keys["stranger"]
    unsigned = bundle_copy()
    extra_file = bundle_copy(current)
    signed_then_changed = bundle_copy(current)
    set_manifest(signed_then_changed, min_version="0.1.0")  # the signature is of the old bytes
    # Signed by a trusted key, but not well formed (sign() refuses such a manifest: signed by hand).
    manifest_bytes = (unsigned / "manifest.json").read_bytes()
    manifest = json.loads(manifest_bytes)
    files = [(f["path"], (unsigned / f["path"]).read_bytes()) for f in manifest["files"]]
    malformed = bundle.canonical_json({**manifest, "min_version": "2.0.0"})
    traversal = bundle.canonical_json({**manifest, "files": [
        {**f, "path": "loa/../../../etc/evil.mpy"} if f["path"] == "loa/clock.mpy" else f for f in manifest["files"]]})
    packed_extra = _tar(tarfile_members(bundle.pack(extra_file)) + [("loa/extra.mpy", b"M\x06")])

    cases = [
        ("unsigned", bundle.pack(unsigned), "unsigned", "not signed"),
        ("unknown key", bundle.pack(bundle_copy(stranger)), "unknown_key", "not a trusted key"),
        ("tampered file", bundle.pack(_tampered_file(bundle_copy(current))), "file_mismatch", "loa/app.mpy"),
        ("tampered manifest", bundle.pack(signed_then_changed), "bad_signature", "does not match"),
        ("malformed manifest", _tar([("manifest.json", malformed), ("manifest.sig", _signature(current, malformed)),
                                     *files]), "malformed_manifest", "above version"),
        ("path traversal in the manifest", _tar([("manifest.json", traversal), ("manifest.sig", _signature(current, traversal)),
                                                 *files]), "malformed_manifest", "not allowed"),
        ("path traversal in the tar", _tar([("manifest.json", b"{}"), ("../../etc/passwd.mpy", b"x")]),
         "path_not_allowed", "not allowed"),
        ("a file the manifest does not name", packed_extra, "unexpected_file", "loa/extra.mpy"),
        ("not a tar", b"PK\x03\x04 a zip is not taken", "not_a_bundle", "tar"),
        ("a foreign signature file", _tar([("manifest.json", manifest_bytes), ("manifest.sig", b'{"algorithm":"rsa"}')]),
         "malformed_signature", "manifest.sig"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for what, body, code, text in cases:
        error = _refusal(service.upload(body))
        assert error["code"] == code, (what, error)
        assert text in error["message_en"], (what, error)
        assert error["message"].startswith("Gói firmware bị từ chối"), (what, error)
        assert service.stored() == (0, 0), what
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written to disk either
    with service.session() as session:
        refused = session.scalars(select(AuditEntry.outcome).where(AuditEntry.action == "upload_firmware_release")).all()
    assert refused == ["refused"] * len(cases)

    # Accepted once; the same version for the same hardware family never again.
    assert service.upload(bundle_copy(current)).status_code == 201
    error = _refusal(service.upload(bundle_copy(signing_keys["next"])), 409)
    assert error["code"] == "conflict" and "never reused" in error["message_en"]
    assert service.stored()[0] == 1
    # The same version for another family is another release.
    assert service.upload(release_of(bundle_copy(), current, hardware="esp32-sim7600")).status_code == 201
    error = _refusal(service.client.get(f"{RELEASES}/{VERSION}", headers=service.admin))
    assert "several hardware families" in error["message_en"]
    shown = service.client.get(f"{RELEASES}/{VERSION}", params={"hardware": "esp32-sim7600"}, headers=service.admin)
    assert shown.status_code == 200 and shown.json()["hardware"] == "esp32-sim7600"


def _signature(key: KeyPair, manifest: bytes) -> bytes:
    signed = keys.load_private(key.private).sign(manifest)
    return bundle.canonical_json({"algorithm": "ed25519", "key_id": key.key_id,
                                  "signature": base64.b64encode(signed).decode()})


def tarfile_members(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def test_withdraw_is_recorded_for_rollouts(service: Service, bundle_copy, signing_keys) -> None:
    release = service.upload(bundle_copy(signing_keys["current"])).json()
    path = f"{RELEASES}/{release['id']}/withdraw"
    _refusal(service.client.post(path, json={"reason": "x"}, headers=service.technician))  # too short a reason
    withdrawn = service.client.post(path, json={"reason": "Mất tiếng sau khi khởi động lại"}, headers=service.technician)
    assert withdrawn.status_code == 200, withdrawn.text
    body = withdrawn.json()
    assert body["withdrawn"] and body["withdrawn_by"] == "kythuat"
    assert body["withdraw_reason"] == "Mất tiếng sau khi khởi động lại" and body["withdrawn_at"]
    error = _refusal(service.client.post(path, json={"reason": "lần nữa"}, headers=service.admin), 409)
    assert "already withdrawn" in error["message_en"]
    assert service.client.post(f"{RELEASES}/999/withdraw", json={"reason": "không có"},
                               headers=service.admin).status_code == 404

    with service.session() as session:
        entries = session.scalars(select(OutboxEntry).where(OutboxEntry.kind == "firmware_release_withdrawn")).all()
        assert [(e.subject, json.loads(e.payload)) for e in entries] == [
            (f"release:{release['id']}", {"version": VERSION, "hardware": HARDWARE})]
        audit = session.scalars(select(AuditEntry).where(AuditEntry.action == "withdraw_firmware_release")
                                .order_by(AuditEntry.id)).all()
    assert [(a.actor, a.outcome) for a in audit] == [("kythuat", "refused"), ("kythuat", "ok"), ("admin", "refused"),
                                                    ("admin", "refused")]
    assert audit[1].target == f"release_id={release['id']}, version={VERSION}, hardware={HARDWARE}"

    # Still listed and shown, as withdrawn; a listing of what may be installed leaves it out.
    assert service.client.get(f"{RELEASES}/{VERSION}", headers=service.admin).json()["withdrawn"]
    assert service.client.get(RELEASES, params={"include_withdrawn": False}, headers=service.admin).json() == []
    # Its version is not free again.
    assert service.upload(bundle_copy(signing_keys["current"])).status_code == 409


def test_only_engineers_and_admins(service: Service, bundle_copy, signing_keys) -> None:
    signed = bundle_copy(signing_keys["current"])
    for who in (service.operator, service.viewer):
        error = _refusal(service.upload(signed, who), 403)
        assert error["code"] == "forbidden"
        assert service.client.get(RELEASES, headers=who).status_code == 403
        assert service.client.get(f"{RELEASES}/{VERSION}", headers=who).status_code == 403
    assert service.stored() == (0, 0)
    assert service.client.post(RELEASES, content=bundle.pack(signed), headers=TAR).status_code == 401
    release = service.upload(signed).json()
    for who in (service.operator, service.viewer):
        assert service.client.post(f"{RELEASES}/{release['id']}/withdraw", json={"reason": "không được"},
                                   headers=who).status_code == 403
    assert not service.client.get(f"{RELEASES}/{VERSION}", headers=service.admin).json()["withdrawn"]


def test_an_oversized_body_is_refused_before_it_is_read(service: Service) -> None:
    error = _refusal(service.upload(b"\0" * (bundle.MAX_UPLOAD_BYTES + 1)), 413)
    assert error["code"] == "too_large"
    assert service.stored() == (0, 0)
