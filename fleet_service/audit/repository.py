"""Every audit log query."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.audit.models import AuditEntry
from fleet_service.scope import RegionScope, ScopeLike


def add(session: Session, entry: AuditEntry) -> None:
    session.add(entry)


def list_entries(session: Session, *, scope: ScopeLike = None, actor: str | None = None,
                 action: str | None = None, since: datetime | None = None, until: datetime | None = None,
                 limit: int = 100, offset: int = 0) -> Sequence[AuditEntry]:
    """Newest first."""
    query = select(AuditEntry).where(RegionScope.of(scope).audit_entries())
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    query = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc()).limit(limit).offset(offset)
    return session.scalars(query).all()
