"""The audit log, for whole-fleet admins: who did what, when, from where."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from fleet_service.audit import service
from fleet_service.audit.schemas import AuditEntryOut
from fleet_service.auth.dependencies import AdminPrincipal
from fleet_service.db import ID_MAX
from fleet_service.deps import SessionDep
from fleet_service.errors import Forbidden
from fleet_service.timefmt import as_utc

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=list[AuditEntryOut])
def audit_log(
    session: SessionDep,
    principal: AdminPrincipal,
    actor: Annotated[str | None, Query(max_length=200, description="only this actor's actions")] = None,
    action: Annotated[str | None, Query(max_length=200, description="only this action (revoke_receiver, "
                                                                   "loa receivers revoke)")] = None,
    since: Annotated[datetime | None, Query(description="ISO 8601; no zone = Asia/Ho_Chi_Minh")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; no zone = Asia/Ho_Chi_Minh")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[AuditEntryOut]:
    """Nhật ký thao tác / every action taken through the API or the ``loa`` command, carried
    out or refused, newest first."""
    if principal.scope.restricted:
        # The log spans the whole fleet: an admin of one subtree would learn of the others.
        raise Forbidden("Chỉ quản trị viên toàn mạng được xem nhật ký thao tác",
                        "Only admins of the whole fleet may read the audit log")
    rows = service.list_entries(session, scope=principal.scope, actor=actor, action=action,
                                since=as_utc(since) if since else None, until=as_utc(until) if until else None,
                                limit=limit, offset=offset)
    return [AuditEntryOut.model_validate(r) for r in rows]
