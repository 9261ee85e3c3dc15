"""Firmware releases as uploaded: the signed manifest and signature as they came (a receiver
checks the same bytes), each file's content, who uploaded it, and whether it was withdrawn.

The files are kept in the database, not on a disk: every API process answers from it
(docs/architecture.md), a release is stored with its metadata in one transaction (a refused
or failed upload leaves nothing), and the database's backups hold them. A release is tens to
hundreds of KiB."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime


class FirmwareRelease(Base):
    __tablename__ = "firmware_releases"
    # A version names one build for good: it is never reused, not even after a withdrawal (a
    # receiver may run it).
    __table_args__ = (UniqueConstraint("hardware", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(16))
    # The versions' order as one number (schemas.version_order), for "the newest" in SQL.
    version_order: Mapped[int] = mapped_column(BigInteger)
    hardware: Mapped[str] = mapped_column(String(40), index=True)
    min_version: Mapped[str] = mapped_column(String(16))
    mpy_version: Mapped[str] = mapped_column(String(16))
    file_count: Mapped[int] = mapped_column(Integer)
    total_length: Mapped[int] = mapped_column(Integer)
    # manifest.json and manifest.sig, byte for byte.
    manifest: Mapped[bytes] = mapped_column(LargeBinary)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(16))
    uploaded_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    uploader_name: Mapped[str] = mapped_column(String(100))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    withdrawn_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    withdrawer_name: Mapped[str | None] = mapped_column(String(100))
    withdraw_reason: Mapped[str | None] = mapped_column(String(500))


class FirmwareReleaseFile(Base):
    __tablename__ = "firmware_release_files"

    release_id: Mapped[int] = mapped_column(ForeignKey("firmware_releases.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    length: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
