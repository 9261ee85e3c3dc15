"""Lease queries: compare-and-set in one statement, so two processes never both win."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from fleet_service.worker.models import WorkerLease


def try_acquire(session: Session, name: str, holder: str, now: datetime, expires_at: datetime) -> bool:
    """Take or renew the lease if it is ours or has expired."""
    taken = session.execute(
        update(WorkerLease)
        .where(WorkerLease.name == name, or_(WorkerLease.holder == holder, WorkerLease.expires_at <= now))
        .values(holder=holder, renewed_at=now, expires_at=expires_at)
    )
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if session.get(WorkerLease, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(WorkerLease(name=name, holder=holder, renewed_at=now, expires_at=expires_at))
    except IntegrityError:  # another process created it first
        return False
    return True


def release(session: Session, name: str, holder: str, now: datetime) -> None:
    """Give the lease up now, so that a waiting process takes it at once."""
    session.execute(update(WorkerLease).where(WorkerLease.name == name, WorkerLease.holder == holder)
                    .values(expires_at=now))


def current_holder(session: Session, name: str, now: datetime) -> str | None:
    return session.scalar(select(WorkerLease.holder).where(WorkerLease.name == name, WorkerLease.expires_at > now))
