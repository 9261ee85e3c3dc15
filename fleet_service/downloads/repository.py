"""Download queries: what a receiver may fetch, a release's files, and the bytes counted."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Dialect, Insert, PoolProxiedConnection, Table, bindparam, case, exists, literal, select
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.orm import Session

from fleet_service.db import upsert
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.firmware.models import FirmwareRelease, FirmwareReleaseFile
from fleet_service.registry.models import Receiver, ReceiverCredential, ReceiverStatus
from fleet_service.rollouts.models import Rollout, RolloutTarget, TargetState

# A receiver may fetch a release once a rollout has offered it (and until it finished with it).
NOT_OFFERED = (TargetState.PENDING.value, TargetState.SKIPPED.value, TargetState.CANCELLED.value)


@dataclass(frozen=True)
class Access:
    """What the database says of one request: whether the login is a live one of an active
    receiver, the release's version (None: no such release), whether it was withdrawn, and
    whether a rollout offers it to that receiver."""

    login: bool
    version: str | None
    withdrawn: bool
    offered: bool


def _access_query():  # its row type as SQLAlchemy infers it
    receiver, secret_hash, release = bindparam("receiver"), bindparam("secret_hash"), bindparam("release")
    # The hash is looked up, not compared in constant time: it is the SHA-256 of a 160-bit
    # random secret, so how long a lookup takes tells nothing that leads to a password.
    login = exists().where(
        ReceiverCredential.receiver_id == receiver, ReceiverCredential.secret_hash == secret_hash,
        ReceiverCredential.revoked_at.is_(None), Receiver.id == ReceiverCredential.receiver_id,
        Receiver.status == ReceiverStatus.ACTIVE.value)
    version = select(FirmwareRelease.version).where(FirmwareRelease.id == release).scalar_subquery()
    withdrawn = select(FirmwareRelease.withdrawn_at.is_not(None)).where(FirmwareRelease.id == release).scalar_subquery()
    offered = exists().where(
        Rollout.release_id == release, RolloutTarget.rollout_id == Rollout.id, RolloutTarget.receiver_id == receiver,
        RolloutTarget.state.not_in([literal(state) for state in NOT_OFFERED]))
    return select(login, version, withdrawn, offered)


ACCESS_QUERY = _access_query()


class AccessQuery:
    """ACCESS_QUERY compiled once for a database and run on the driver's own cursor, by whoever
    holds a connection of it (fleet_service/downloads/serving.py): it runs for every download
    request, and SQLAlchemy's own work per execution costs twice the query's on SQLite."""

    def __init__(self, dialect: Dialect) -> None:
        compiled = ACCESS_QUERY.compile(dialect=dialect)
        self.sql = compiled.string
        self._fixed = dict(compiled.params)  # the states and status written into the query
        self._order = compiled.positiontup  # None for a driver that takes named parameters

    def run_many(self, connection: PoolProxiedConnection, keys: Sequence[tuple[str, str, int]]) -> list[Access]:
        """What the database says of each (receiver id, secret hash, release id), one statement
        each. On PostgreSQL several are sent together (psycopg's pipeline mode): one round trip
        for them all rather than one each."""
        driver: Any = connection.dbapi_connection
        pipeline = getattr(driver, "pipeline", None)
        if pipeline is None or len(keys) < 2:
            cursor = connection.cursor()
            try:
                return [self._run(cursor, *key) for key in keys]
            finally:
                cursor.close()
        with pipeline():
            cursors = [driver.cursor() for _ in keys]
            for cursor, key in zip(cursors, keys):
                cursor.execute(self.sql, self._params(*key))
        try:
            return [self._read(cursor) for cursor in cursors]
        finally:
            for cursor in cursors:
                cursor.close()

    def _params(self, receiver_id: str, secret_hash: str, release_id: int) -> Any:
        values = {**self._fixed, "receiver": receiver_id, "secret_hash": secret_hash, "release": release_id}
        return values if self._order is None else tuple(values[name] for name in self._order)

    def _run(self, cursor: DBAPICursor, receiver_id: str, secret_hash: str, release_id: int) -> Access:
        cursor.execute(self.sql, self._params(receiver_id, secret_hash, release_id))
        return self._read(cursor)

    @staticmethod
    def _read(cursor: Any) -> Access:
        row = cursor.fetchone()
        assert row is not None  # one row, whatever the database holds
        login, version, withdrawn, offered = row
        return Access(bool(login), version, bool(withdrawn), bool(offered))


@dataclass(frozen=True)
class StoredRelease:
    """What a receiver may fetch of a release: manifest.json and manifest.sig as uploaded, and
    each file (path → SHA-256, content). Never changes once uploaded."""

    manifest: bytes
    manifest_sha256: str
    signature: bytes
    files: dict[str, tuple[str, bytes]]


def stored_release(session: Session, release_id: int) -> StoredRelease | None:
    release = session.get(FirmwareRelease, release_id)
    if release is None:
        return None
    files = {path: (digest, content) for path, digest, content in session.execute(
        select(FirmwareReleaseFile.path, FirmwareReleaseFile.sha256, FirmwareReleaseFile.content)
        .where(FirmwareReleaseFile.release_id == release_id))}
    return StoredRelease(release.manifest, release.manifest_sha256, release.signature, files)


@dataclass(frozen=True)
class Served:
    """Bytes sent to one receiver of one release in ``requests`` requests, between two times."""

    receiver_id: str
    release_id: int
    bytes_served: int
    requests: int
    first_at: datetime
    last_at: datetime


@functools.cache
def _served_upsert(dialect: str) -> Insert:
    """Adds to the (receiver, release) row, creating it the first time: whichever process wrote
    the row before, two API processes never collide."""
    return upsert(dialect, cast(Table, FirmwareDownload.__table__), ("receiver_id", "release_id"),
                  lambda stored, new: {
                      "bytes_served": stored.bytes_served + new.bytes_served,
                      "requests": stored.requests + new.requests,
                      "first_at": case((new.first_at < stored.first_at, new.first_at), else_=stored.first_at),
                      "last_at": case((new.last_at > stored.last_at, new.last_at), else_=stored.last_at)})


def add_served(session: Session, counts: Sequence[Served]) -> None:
    """Adds to each receiver's row, creating it the first time: one statement for them all."""
    if not counts:
        return
    # In the same order in every process: two flushes on PostgreSQL lock rows in one order and
    # never deadlock.
    rows = sorted(counts, key=lambda c: (c.receiver_id, c.release_id))
    session.execute(_served_upsert(session.get_bind().dialect.name),
                    [{"receiver_id": c.receiver_id, "release_id": c.release_id, "bytes_served": c.bytes_served,
                      "requests": c.requests, "first_at": c.first_at, "last_at": c.last_at} for c in rows])


def served(session: Session, release_id: int) -> dict[str, int]:
    """Bytes served to each receiver that fetched the release."""
    return {rid: n for rid, n in session.execute(
        select(FirmwareDownload.receiver_id, FirmwareDownload.bytes_served)
        .where(FirmwareDownload.release_id == release_id))}
