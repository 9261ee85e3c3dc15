"""Every firmware release query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile

# A release's columns without its manifest and signature bytes (listing needs none).
_SUMMARY = load_only(
    FirmwareRelease.id, FirmwareRelease.version, FirmwareRelease.version_order, FirmwareRelease.hardware,
    FirmwareRelease.min_version, FirmwareRelease.mpy_version, FirmwareRelease.file_count,
    FirmwareRelease.total_length, FirmwareRelease.manifest_sha256, FirmwareRelease.key_id,
    FirmwareRelease.uploaded_by, FirmwareRelease.uploader_name, FirmwareRelease.uploaded_at,
    FirmwareRelease.withdrawn_at, FirmwareRelease.withdrawn_by, FirmwareRelease.withdrawer_name,
    FirmwareRelease.withdraw_reason)


def add(session: Session, release: FirmwareRelease, files: Sequence[FirmwareReleaseFile]) -> None:
    session.add(release)
    session.flush()  # the id, and the unique (hardware, version) checked now
    for file in files:
        file.release_id = release.id
    session.add_all(files)
    session.flush()


def find(session: Session, hardware: str, version: str) -> FirmwareRelease | None:
    return session.scalar(select(FirmwareRelease).options(_SUMMARY)
                          .where(FirmwareRelease.hardware == hardware, FirmwareRelease.version == version))


def get(session: Session, release_id: int, *, for_update: bool = False) -> FirmwareRelease | None:
    query = select(FirmwareRelease).options(_SUMMARY).where(FirmwareRelease.id == release_id)
    if for_update:
        query = query.with_for_update()
    return session.scalar(query)


def with_version(session: Session, version: str, hardware: str | None = None) -> Sequence[FirmwareRelease]:
    query = select(FirmwareRelease).options(_SUMMARY).where(FirmwareRelease.version == version)
    if hardware is not None:
        query = query.where(FirmwareRelease.hardware == hardware)
    return session.scalars(query.order_by(FirmwareRelease.hardware)).all()


def list_releases(session: Session, *, hardware: str | None = None, include_withdrawn: bool = True,
                  limit: int = 100, offset: int = 0) -> Sequence[FirmwareRelease]:
    """Newest version first within each hardware family."""
    query = select(FirmwareRelease).options(_SUMMARY)
    if hardware is not None:
        query = query.where(FirmwareRelease.hardware == hardware)
    if not include_withdrawn:
        query = query.where(FirmwareRelease.withdrawn_at.is_(None))
    query = query.order_by(FirmwareRelease.hardware, FirmwareRelease.version_order.desc()).limit(limit).offset(offset)
    return session.scalars(query).all()


def files_of(session: Session, release_id: int) -> Sequence[tuple[str, int, str]]:
    """(path, length, sha256) of each file, by path; not their content."""
    rows = session.execute(select(FirmwareReleaseFile.path, FirmwareReleaseFile.length, FirmwareReleaseFile.sha256)
                           .where(FirmwareReleaseFile.release_id == release_id).order_by(FirmwareReleaseFile.path))
    return [(path, length, sha256) for path, length, sha256 in rows]
