"""Alerts API: incidents (list, one, acknowledge, resolve), silences for planned work, and each
region's rules. Anyone signed in reads what lies in their region; operators and technicians
acknowledge and resolve; technicians silence and set rules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from fleet_service.alerts import service
from fleet_service.alerts.models import IncidentState
from fleet_service.alerts.rules import RuleKind
from fleet_service.alerts.schemas import IncidentOut, NoteIn, RuleIn, RuleOut, SilenceIn, SilenceOut
from fleet_service.audit.middleware import TARGET_STATE
from fleet_service.auth.dependencies import CurrentPrincipal, Principal, TechnicianPrincipal, require_roles
from fleet_service.auth.models import Role
from fleet_service.db import ID_MAX, RowId
from fleet_service.deps import SessionDep

router = APIRouter(tags=["alerts"])

CrewPrincipal = Annotated[Principal, Depends(require_roles(Role.OPERATOR, Role.TECHNICIAN))]


def _actor(principal: Principal) -> service.Actor:
    return service.Actor(principal.username, principal.scope)


@router.get("/incidents", response_model=list[IncidentOut])
def list_incidents(
    session: SessionDep, principal: CurrentPrincipal,
    state: Annotated[list[IncidentState] | None, Query(description="only incidents in these states")] = None,
    kind: Annotated[list[RuleKind] | None, Query(description="only these rules")] = None,
    receiver_id: Annotated[str | None, Query(max_length=64)] = None,
    station_id: Annotated[int | None, Query(ge=1, le=ID_MAX)] = None,
    members: Annotated[bool, Query(description="also the members of grouped incidents")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[IncidentOut]:
    """Sự cố / incidents in the caller's region, newest first. ``state=open&state=acknowledged``:
    what is not dealt with yet."""
    rows = service.list_incidents(session, principal.scope, states=[s.value for s in state or []],
                                  kinds=[k.value for k in kind or []], receiver_id=receiver_id,
                                  station_id=station_id, members=members, limit=limit, offset=offset)
    return [service.incident_out(i) for i in rows]


@router.get("/incidents/{incident_id}", response_model=IncidentOut)
def get_incident(incident_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> IncidentOut:
    return service.incident_out(service.get_incident(session, incident_id, principal.scope))


@router.post("/incidents/{incident_id}/acknowledge", response_model=IncidentOut)
def acknowledge(incident_id: RowId, data: NoteIn, request: Request, session: SessionDep,
                principal: CrewPrincipal) -> IncidentOut:
    """Xác nhận đã nhận / acknowledge: someone is on it."""
    incident = service.acknowledge(session, incident_id, _actor(principal), data.note)
    setattr(request.state, TARGET_STATE, f"incident_id={incident.id}, kind={incident.kind}")
    return service.incident_out(incident)


@router.post("/incidents/{incident_id}/resolve", response_model=IncidentOut)
def resolve(incident_id: RowId, data: NoteIn, request: Request, session: SessionDep,
            principal: CrewPrincipal) -> IncidentOut:
    """Đóng sự cố / resolve by hand, with what was done."""
    incident = service.resolve(session, incident_id, _actor(principal), data.note)
    setattr(request.state, TARGET_STATE, f"incident_id={incident.id}, kind={incident.kind}")
    return service.incident_out(incident)


@router.get("/silences", response_model=list[SilenceOut])
def list_silences(session: SessionDep, principal: CurrentPrincipal,
                  ended: Annotated[bool, Query(description="also those that have ended")] = False) -> list[SilenceOut]:
    return [service.silence_out(s) for s in service.list_silences(session, principal.scope, current_only=not ended)]


@router.post("/silences", response_model=SilenceOut, status_code=status.HTTP_201_CREATED)
def create_silence(data: SilenceIn, request: Request, session: SessionDep,
                   principal: TechnicianPrincipal) -> SilenceOut:
    """Tạm im / silence a receiver, a station or a region until ``ends_at`` (planned work):
    incidents are still recorded, nobody is notified of them."""
    silence = service.create_silence(session, data, _actor(principal))
    setattr(request.state, TARGET_STATE, f"silence_id={silence.id}")
    return service.silence_out(silence)


@router.delete("/silences/{silence_id}", response_model=SilenceOut)
def end_silence(silence_id: RowId, request: Request, session: SessionDep,
                principal: TechnicianPrincipal) -> SilenceOut:
    """End a silence now."""
    silence = service.end_silence(session, silence_id, _actor(principal))
    setattr(request.state, TARGET_STATE, f"silence_id={silence.id}")
    return service.silence_out(silence)


@router.get("/alert-rules", response_model=list[RuleOut])
def rules(session: SessionDep, principal: CurrentPrincipal,
          region_id: Annotated[int | None, Query(ge=1, le=ID_MAX, description="none: the service-wide rules")] = None,
          ) -> list[RuleOut]:
    """Quy tắc cảnh báo / the rules in force in a region, and where each value comes from."""
    return service.rules_for(session, region_id, principal.scope)


@router.put("/alert-rules/{kind}", response_model=RuleOut)
def set_rule(kind: RuleKind, data: RuleIn, request: Request, session: SessionDep, principal: TechnicianPrincipal,
             region_id: Annotated[int | None, Query(ge=1, le=ID_MAX)] = None) -> RuleOut:
    """Set some of a rule's fields for a region (none: service-wide, whole-fleet admins only)."""
    out = service.set_rule(session, kind, region_id, data, _actor(principal))
    setattr(request.state, TARGET_STATE, f"rule={kind.value}, region_id={region_id}")
    return out


@router.delete("/alert-rules/{kind}", response_model=RuleOut)
def reset_rule(kind: RuleKind, request: Request, session: SessionDep, principal: TechnicianPrincipal,
               region_id: Annotated[int | None, Query(ge=1, le=ID_MAX)] = None) -> RuleOut:
    """The region takes the rule from the region above (or the default) again."""
    out = service.reset_rule(session, kind, region_id, _actor(principal))
    setattr(request.state, TARGET_STATE, f"rule={kind.value}, region_id={region_id}")
    return out
