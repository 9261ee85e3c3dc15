"""Commands API: send, follow, and read the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status

from fleet_service.auth.dependencies import CurrentPrincipal, Principal
from fleet_service.commands import repository, service
from fleet_service.commands.schemas import CommandCreate, CommandOut, TargetOut
from fleet_service.db import ID_MAX
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.runtime import Runtime
from fleet_service.timefmt import period

router = APIRouter(tags=["commands"])


def issuer_of(principal: Principal) -> service.Issuer:
    return service.Issuer(principal.user_id, principal.username, principal.role, principal.scope,
                          principal.emergency)


@router.post("/commands", response_model=CommandOut, status_code=status.HTTP_202_ACCEPTED)
def send_command(data: CommandCreate, session: SessionDep, runtime: RuntimeDep, principal: CurrentPrincipal) -> CommandOut:
    """Gửi lệnh / send a command to a receiver, a station, a region subtree or the whole fleet.
    Answered once it is recorded; each receiver's outcome follows in GET /commands/{id}."""
    created = service.create_command(session, data, issuer_of(principal))
    session.commit()  # recorded before anything is sent: the audit log never misses a command
    deliver_now(runtime, [created])
    return service.command_out(created.command, {"pending": len(created.receiver_ids)})


def deliver_now(runtime: Runtime, created: Sequence[service.Created]) -> None:
    """After the commit: in the leading worker's own process, hand the commands to delivery and
    wake the outbox, so they leave at once; elsewhere the leader finds their outbox entries
    within about a second."""
    if runtime.commands is None or runtime.outbox is None:
        return
    for made in created:
        runtime.commands.prepare(made)
    runtime.outbox.wake()


@router.get("/commands", response_model=list[CommandOut])
def list_commands(
    session: SessionDep,
    principal: CurrentPrincipal,
    start: Annotated[datetime | None, Query(description="ISO 8601; no zone = Asia/Ho_Chi_Minh. Default: 7 days before end.")] = None,
    end: Annotated[datetime | None, Query(description="ISO 8601; no zone = Asia/Ho_Chi_Minh. Default: now.")] = None,
    receiver: Annotated[str | None, Query(description="only commands sent to this receiver")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[CommandOut]:
    """Nhật ký lệnh / the audit log: who sent what to whom, when, and the outcomes, newest
    first. An operator sees the commands that concern their region: sent to it, to a region
    above it or the whole fleet, or to any of its receivers; the counts are of its receivers."""
    since, until = period(start, end, timedelta(days=7))
    rows = repository.list_commands(session, scope=principal.scope, since=since, until=until,
                                    receiver_id=receiver, limit=limit, offset=offset)
    return service.describe(session, rows, scope=principal.scope)


@router.get("/commands/{command_id}", response_model=CommandOut)
def get_command(command_id: str, session: SessionDep, principal: CurrentPrincipal) -> CommandOut:
    command = service.get_command(session, command_id, scope=principal.scope)
    return service.describe(session, [command], scope=principal.scope)[0]


@router.get("/commands/{command_id}/targets", response_model=list[TargetOut])
def command_targets(
    command_id: str, session: SessionDep, principal: CurrentPrincipal,
    status_filter: Annotated[str | None, Query(alias="status", description="only targets in this status")] = None,
) -> list[TargetOut]:
    """Each receiver's outcome, with the reason explained (only the caller's receivers)."""
    service.get_command(session, command_id, scope=principal.scope)
    targets = repository.targets_of(session, command_id, status=status_filter, scope=principal.scope)
    return [service.target_out(t) for t in targets]
