"""Outbox queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fleet_service.outbox.models import OutboxEntry, WorkerHeartbeat


def add(session: Session, entry: OutboxEntry) -> OutboxEntry:
    session.add(entry)
    session.flush()
    return entry


def due(session: Session, now: datetime, limit: int) -> Sequence[OutboxEntry]:
    """Pending entries in the order they were recorded, up to the first one not yet due: an
    entry waiting for its retry holds back the ones after it, so that effects on one subject
    are never applied out of order (a revoke must not be overtaken by an older password)."""
    pending = session.scalars(select(OutboxEntry).where(OutboxEntry.done_at.is_(None))
                              .order_by(OutboxEntry.id).limit(limit)).all()
    ready = []
    for entry in pending:
        if entry.available_at > now:
            break
        ready.append(entry)
    return ready


def get_many(session: Session, ids: Sequence[int]) -> Sequence[OutboxEntry]:
    return session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(ids))).all()


def pending_count(session: Session) -> int:
    return len(session.scalars(select(OutboxEntry.id).where(OutboxEntry.done_at.is_(None))).all())


def renew_heartbeat(session: Session, holder: str, now: datetime, expires_at: datetime) -> None:
    row = session.get(WorkerHeartbeat, holder)
    if row is None:
        session.add(WorkerHeartbeat(holder=holder, renewed_at=now, expires_at=expires_at))
    else:
        row.renewed_at, row.expires_at = now, expires_at
    session.flush()


def drop_heartbeat(session: Session, holder: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.holder == holder))


def live_workers(session: Session, now: datetime) -> Sequence[str]:
    return session.scalars(select(WorkerHeartbeat.holder).where(WorkerHeartbeat.expires_at > now)).all()
