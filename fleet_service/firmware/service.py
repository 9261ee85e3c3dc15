"""Accepting, reading and withdrawing firmware releases. Functions take a session and never
commit (the request does)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet_service.config import Settings
from fleet_service.db import utcnow
from fleet_service.errors import Conflict, Invalid, NotFound, Unavailable
from fleet_service.firmware import bundle, keys, repository
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.firmware.schemas import ReleaseDetailOut, ReleaseFileOut, ReleaseOut, version_order
from fleet_service.outbox import service as outbox
from fleet_service.outbox.service import OutboxKind


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int | None
    username: str


def trusted_keys(settings: Settings) -> list[Ed25519PublicKey]:
    """The public keys of LOA_FIRMWARE_KEYS (checked when the settings were read; a key file
    that has gone since is said so)."""
    try:
        return [keys.load_public(entry) for entry in settings.firmware_keys]
    except keys.KeyProblem as exc:
        raise Unavailable(f"Khoá tin cậy của firmware không đọc được: {exc.message_vi}",
                          f"A trusted firmware key cannot be read: {exc.message_en}") from None


def upload(session: Session, data: bytes, trusted: Sequence[Ed25519PublicKey], actor: Actor) -> FirmwareRelease:
    """Store the bundle of the tar ``data`` as a release, only once its signature, manifest and
    files are all checked (bundle.verify); a refusal raises before anything is added."""
    verified = bundle.verify(bundle.unpack(data), trusted)
    manifest = verified.manifest
    if repository.find(session, manifest.hardware, manifest.version) is not None:
        raise _duplicate(manifest.hardware, manifest.version)
    release = FirmwareRelease(
        version=manifest.version, version_order=version_order(manifest.version), hardware=manifest.hardware,
        min_version=manifest.min_version, mpy_version=manifest.mpy_version, file_count=len(manifest.files),
        total_length=manifest.total_length, manifest=verified.manifest_bytes,
        manifest_sha256=hashlib.sha256(verified.manifest_bytes).hexdigest(), signature=verified.signature_bytes,
        key_id=verified.key_id, uploaded_by=actor.user_id, uploader_name=actor.username, uploaded_at=utcnow())
    files = [FirmwareReleaseFile(path=f.path, length=f.length, sha256=f.sha256, content=verified.files[f.path])
             for f in manifest.files]
    try:
        repository.add(session, release, files)
    except IntegrityError:  # the same version uploaded at the same moment by someone else
        raise _duplicate(manifest.hardware, manifest.version) from None
    return release


def _duplicate(hardware: str, version: str) -> Conflict:
    return Conflict(f"Đã có bản phát hành {version} cho {hardware}; một phiên bản không bao giờ được dùng lại, "
                    f"kể cả khi đã thu hồi: hãy tăng số phiên bản",
                    f"There is already a release {version} for {hardware}; a version is never reused, not even "
                    f"after a withdrawal: raise the version number")


def get(session: Session, release_id: int) -> FirmwareRelease:
    release = repository.get(session, release_id)
    if release is None:
        raise NotFound(f"Không có bản phát hành {release_id}", f"No release {release_id}")
    return release


def get_by_version(session: Session, version: str, hardware: str | None = None) -> FirmwareRelease:
    found = repository.with_version(session, version[:40], hardware)
    where_vi = f" cho {hardware}" if hardware else ""
    where_en = f" for {hardware}" if hardware else ""
    if not found:
        raise NotFound(f"Không có bản phát hành {version[:40]}{where_vi}", f"No release {version[:40]}{where_en}")
    if len(found) > 1:
        families = ", ".join(r.hardware for r in found)
        raise Invalid(f"Phiên bản {version} có cho nhiều dòng phần cứng ({families}): chọn một bằng hardware",
                      f"Version {version} exists for several hardware families ({families}): choose one with hardware")
    return found[0]


def withdraw(session: Session, release_id: int, reason: str, actor: Actor) -> FirmwareRelease:
    """Mark a release withdrawn and record the fact for whatever will react to it (rollouts,
    not written yet: they will stop offering it). The release stays, for the record and for
    the receivers that run it."""
    release = repository.get(session, release_id, for_update=True)
    if release is None:
        raise NotFound(f"Không có bản phát hành {release_id}", f"No release {release_id}")
    if release.withdrawn_at is not None:
        raise Conflict(f"Bản phát hành {release.version} ({release.hardware}) đã bị thu hồi rồi",
                       f"Release {release.version} ({release.hardware}) is already withdrawn")
    release.withdrawn_at = utcnow()
    release.withdrawn_by = actor.user_id
    release.withdrawer_name = actor.username
    release.withdraw_reason = reason
    outbox.record(session, OutboxKind.FIRMWARE_RELEASE_WITHDRAWN, f"release:{release.id}",
                  {"version": release.version, "hardware": release.hardware})
    session.flush()
    return release


def release_out(release: FirmwareRelease) -> ReleaseOut:
    return ReleaseOut(
        id=release.id, version=release.version, hardware=release.hardware, min_version=release.min_version,
        mpy_version=release.mpy_version, files=release.file_count, total_length=release.total_length,
        key_id=release.key_id, manifest_sha256=release.manifest_sha256, uploaded_by=release.uploader_name,
        uploaded_at=release.uploaded_at, withdrawn=release.withdrawn_at is not None,
        withdrawn_at=release.withdrawn_at, withdrawn_by=release.withdrawer_name,
        withdraw_reason=release.withdraw_reason)


def detail_out(session: Session, release: FirmwareRelease) -> ReleaseDetailOut:
    files = [ReleaseFileOut(path=p, length=n, sha256=h) for p, n, h in repository.files_of(session, release.id)]
    return ReleaseDetailOut(**release_out(release).model_dump(), file_list=files)
