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
    """Pending entries in the order they were recorded, except those whose subject has an
    earlier entry not yet due: effects on one subject are never applied out of order (a revoke
    must not be overtaken by an older password), while one subject waiting for its retry does
    not hold back the others (a command while the broker refuses a login change)."""
    pending = session.scalars(select(OutboxEntry).where(OutboxEntry.done_at.is_(None))
                              .order_by(OutboxEntry.id).limit(limit)).all()
    waiting: set[tuple[str, str]] = set()
    ready = []
    for entry in pending:
        key = order_key(entry.kind, entry.subject)
        if key in waiting or entry.available_at > now:
            waiting.add(key)
            continue
        ready.append(entry)
    return ready


def order_key(kind: str, subject: str) -> tuple[str, str]:
    """Entries with the same key are applied in order: kinds of one family ("receiver_…",
    "command_…") about one subject."""
    return kind.split("_", 1)[0], subject


def get_many(session: Session, ids: Sequence[int]) -> Sequence[OutboxEntry]:
    return session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(ids))).all()


def pending_count(session: Session) -> int:
    return len(session.scalars(select(OutboxEntry.id).where(OutboxEntry.done_at.is_(None))).all())
