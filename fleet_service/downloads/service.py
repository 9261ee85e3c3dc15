"""Firmware to receivers: who may fetch what, the files' bytes from a cache on disk (each API
process fills its own from the database, by content hash), and the bytes counted per receiver.

A receiver signs in with its own MQTT login (HTTP Basic): a revoked login is refused at the
next request, and nobody else can fetch the firmware. Range requests are answered (a download
cut by the 4G link resumes where it stopped)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.downloads import repository
from fleet_service.errors import LoaError, NotAuthenticated, NotFound
from fleet_service.firmware.schemas import MANIFEST_NAME, SIGNATURE_NAME
from fleet_service.registry import service as registry


class ReceiverNotAuthenticated(NotAuthenticated):
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Basic realm="loa-firmware"'}


class NotOffered(LoaError):
    status_code = 403
    code = "not_offered"


class Withdrawn(LoaError):
    status_code = 410
    code = "withdrawn"


def sign_in(session: Session, receiver_id: str | None, password: str | None) -> str:
    if not receiver_id or password is None or not registry.verify_receiver_password(session, receiver_id, password):
        raise ReceiverNotAuthenticated("Máy thu chưa đăng nhập hoặc sai mật khẩu",
                                       "the receiver's login is missing or wrong")
    return receiver_id


def authorize(session: Session, receiver_id: str, release_id: int) -> None:
    release = repository.release(session, release_id)
    if release is None:
        raise NotFound(f"Không có bản phát hành {release_id}", f"no release {release_id}")
    if release.withdrawn_at is not None:
        raise Withdrawn(f"Bản phát hành {release.version} đã bị thu hồi", f"release {release.version} was withdrawn")
    if not repository.offered(session, receiver_id, release_id):
        raise NotOffered(f"Bản phát hành {release.version} chưa được gửi cho máy thu {receiver_id}",
                         f"release {release.version} has not been offered to receiver {receiver_id}")


def cached_file(session: Session, cache_dir: Path, release_id: int, path: str) -> Path:
    """The file on disk, named by its SHA-256: written once from the database (and checked
    against its hash), then served by every request of this process."""
    release = repository.release(session, release_id)
    assert release is not None  # authorized
    content: bytes | None
    if path == MANIFEST_NAME:
        digest, content = release.manifest_sha256, release.manifest
    elif path == SIGNATURE_NAME:
        digest, content = hashlib.sha256(release.signature).hexdigest(), release.signature
    else:
        found = repository.file_digest(session, release_id, path)
        if found is None:
            raise NotFound(f"Bản phát hành không có tệp '{path[:100]}'", f"the release has no file '{path[:100]}'")
        digest, content = found[0], None
    target = cache_dir / digest
    if target.is_file():
        return target
    if content is None:
        content = repository.file_content(session, release_id, path) or b""
    if hashlib.sha256(content).hexdigest() != digest:  # the database's copy is damaged: never serve it
        raise RuntimeError(f"release {release_id} file {path!r} does not match its SHA-256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=cache_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.replace(temporary, target)  # atomic: a concurrent request sees the whole file or none
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def record_served(sessions: sessionmaker[Session], receiver_id: str, release_id: int, sent: int) -> None:
    now = utcnow()
    for attempt in range(2):
        try:
            with session_scope(sessions) as session:
                repository.count_served(session, receiver_id, release_id, sent, now)
            return
        except IntegrityError:  # the receiver's first two requests at once: the other inserted
            if attempt:
                raise
