"""Outbox queries."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.outbox.models import OutboxEntry


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
