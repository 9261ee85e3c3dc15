"""Firmware to receivers: who may fetch what, a release's files, and the bytes counted per
receiver.

A receiver signs in with its own MQTT login (HTTP Basic) and may fetch a release a rollout
offered it. Every request is decided from the database as it stands after the request came
in, so a revoked login, a withdrawn release or a cancelled offer is refused at the next
request, whichever API process answers it: one statement per request
(fleet_service/downloads/serving.py says on which connection). A release's files never
change once uploaded: each process keeps the ones it serves."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import PoolProxiedConnection
from sqlalchemy.orm import Session

from fleet_service.auth.security import token_hash
from fleet_service.downloads import repository
from fleet_service.downloads.repository import Served
from fleet_service.errors import LoaError, NotAuthenticated, NotFound
from fleet_service.firmware.schemas import MANIFEST_NAME, SIGNATURE_NAME

# Longer user names are no receiver id (String(64) in the registry): refused without a query.
MAX_RECEIVER_ID = 64


class ReceiverNotAuthenticated(NotAuthenticated):
    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": 'Basic realm="loa-firmware"'}


class NotOffered(LoaError):
    status_code = 403
    code = "not_offered"


class Withdrawn(LoaError):
    status_code = 410
    code = "withdrawn"


def not_authenticated() -> ReceiverNotAuthenticated:
    return ReceiverNotAuthenticated("Máy thu chưa đăng nhập hoặc sai mật khẩu",
                                    "the receiver's login is missing or wrong")


@dataclass(frozen=True)
class Ask:
    """One request's question: may this login fetch from this release? The password is held
    only as its SHA-256, what the registry stores."""

    receiver_id: str
    secret_hash: str
    release_id: int


def ask(receiver_id: str | None, password: str | None, release_id: int) -> Ask:
    """Raises at once for a login that cannot be any receiver's."""
    if not receiver_id or password is None or len(receiver_id) > MAX_RECEIVER_ID:
        raise not_authenticated()
    return Ask(receiver_id, token_hash(password), release_id)


def authorize_many(query: repository.AccessQuery, connection: PoolProxiedConnection, asks: Sequence[Ask]
                   ) -> list[LoaError | None]:
    """For each question, None (it may fetch) or the error to answer, in the order of the
    checks: its login, the release, its withdrawal, the offer. One statement each."""
    accesses = query.run_many(connection, [(a.receiver_id, a.secret_hash, a.release_id) for a in asks])
    return [_decide(a, access) for a, access in zip(asks, accesses)]


def _decide(a: Ask, access: repository.Access) -> LoaError | None:
    if not access.login:
        return not_authenticated()
    if access.version is None:
        return NotFound(f"Không có bản phát hành {a.release_id}", f"no release {a.release_id}")
    if access.withdrawn:
        return Withdrawn(f"Bản phát hành {access.version} đã bị thu hồi", f"release {access.version} was withdrawn")
    if not access.offered:
        return NotOffered(f"Bản phát hành {access.version} chưa được gửi cho máy thu {a.receiver_id}",
                          f"release {access.version} has not been offered to receiver {a.receiver_id}")
    return None


# A release's servable files: path → (SHA-256, content), manifest.json and manifest.sig included.
ReleaseFiles = dict[str, tuple[str, bytes]]


def load_release(session: Session, release_id: int) -> ReleaseFiles:
    """A release's files as stored, each checked against its SHA-256: a damaged copy in the
    database is never served."""
    stored = repository.stored_release(session, release_id)
    if stored is None:
        raise NotFound(f"Không có bản phát hành {release_id}", f"no release {release_id}")
    files = dict(stored.files)
    files[MANIFEST_NAME] = (stored.manifest_sha256, stored.manifest)
    files[SIGNATURE_NAME] = (hashlib.sha256(stored.signature).hexdigest(), stored.signature)
    damaged = sorted(path for path, (digest, content) in files.items() if hashlib.sha256(content).hexdigest() != digest)
    if damaged:
        raise RuntimeError(f"release {release_id}: {', '.join(damaged)} do not match their SHA-256")
    return files


def release_file(files: ReleaseFiles, path: str) -> tuple[str, bytes]:
    """(SHA-256, content) of ``manifest.json``, ``manifest.sig`` or one of the release's files."""
    found = files.get(path)
    if found is None:
        raise NotFound(f"Bản phát hành không có tệp '{path[:100]}'", f"the release has no file '{path[:100]}'")
    return found


def record_served(session: Session, counts: Sequence[Served]) -> None:
    repository.add_served(session, counts)
