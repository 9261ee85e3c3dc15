"""Download queries: what a receiver may fetch, the files' bytes, and the bytes counted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.rollouts.models import Rollout, RolloutTarget, TargetState

# A receiver may fetch a release once a rollout has offered it (and until it finished with it).
NOT_OFFERED = (TargetState.PENDING.value, TargetState.SKIPPED.value, TargetState.CANCELLED.value)


def release(session: Session, release_id: int) -> FirmwareRelease | None:
    return session.get(FirmwareRelease, release_id)


def offered(session: Session, receiver_id: str, release_id: int) -> bool:
    query = (select(RolloutTarget.rollout_id).join(Rollout, Rollout.id == RolloutTarget.rollout_id)
             .where(Rollout.release_id == release_id, RolloutTarget.receiver_id == receiver_id,
                    RolloutTarget.state.not_in(NOT_OFFERED)).limit(1))
    return session.scalar(query) is not None


def file_digest(session: Session, release_id: int, path: str) -> tuple[str, int] | None:
    row = session.execute(select(FirmwareReleaseFile.sha256, FirmwareReleaseFile.length)
                          .where(FirmwareReleaseFile.release_id == release_id, FirmwareReleaseFile.path == path)).first()
    return None if row is None else (row[0], row[1])


def file_content(session: Session, release_id: int, path: str) -> bytes | None:
    return session.scalar(select(FirmwareReleaseFile.content)
                          .where(FirmwareReleaseFile.release_id == release_id, FirmwareReleaseFile.path == path))


def count_served(session: Session, receiver_id: str, release_id: int, sent: int, now: datetime) -> None:
    updated = session.execute(
        update(FirmwareDownload)
        .where(FirmwareDownload.receiver_id == receiver_id, FirmwareDownload.release_id == release_id)
        .values(bytes_served=FirmwareDownload.bytes_served + sent, requests=FirmwareDownload.requests + 1,
                last_at=now))
    if getattr(updated, "rowcount", 0) == 0:
        session.add(FirmwareDownload(receiver_id=receiver_id, release_id=release_id, bytes_served=sent, requests=1,
                                     first_at=now, last_at=now))


def served(session: Session, release_id: int) -> dict[str, int]:
    """Bytes served to each receiver that fetched the release."""
    return {rid: n for rid, n in session.execute(
        select(FirmwareDownload.receiver_id, FirmwareDownload.bytes_served)
        .where(FirmwareDownload.release_id == release_id))}
