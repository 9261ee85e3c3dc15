"""Alerts API: incidents (list, one, acknowledge, resolve), silences for planned work, and each
region's rules. Anyone signed in reads what lies in their region; operators and technicians
acknowledge and resolve; technicians silence and set rules."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import HTMLResponse

from fleet_service.alerts import notify, service
from fleet_service.alerts.models import IncidentState
from fleet_service.alerts.rules import RuleKind
from fleet_service.alerts.schemas import (CrewIn, CrewOut, IncidentOut, MemberIn, MemberOut, NoteIn, NotificationOut,
                                          RuleIn, RuleOut, SilenceIn, SilenceOut)
from fleet_service.audit.middleware import TARGET_STATE
from fleet_service.auth.dependencies import CurrentPrincipal, Principal, TechnicianPrincipal, require_roles
from fleet_service.auth.models import Role
from fleet_service.db import ID_MAX, RowId
from fleet_service.deps import SessionDep
from fleet_service.errors import LoaError
from fleet_service.timefmt import local_text

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
    region_id: Annotated[int | None, Query(ge=1, le=ID_MAX, description="only in this region's subtree")] = None,
    parent_id: Annotated[int | None, Query(ge=1, le=ID_MAX, description="the members of this grouped incident")] = None,
    members: Annotated[bool, Query(description="also the members of grouped incidents")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[IncidentOut]:
    """Sự cố / incidents in the caller's region, newest first. ``state=open&state=acknowledged``:
    what is not dealt with yet."""
    rows = service.list_incidents(session, principal.scope, states=[s.value for s in state or []],
                                  kinds=[k.value for k in kind or []], receiver_id=receiver_id,
                                  station_id=station_id, region_id=region_id, parent_id=parent_id, members=members,
                                  limit=limit, offset=offset)
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


@router.get("/incidents/{incident_id}/notifications", response_model=list[NotificationOut])
def incident_notifications(incident_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> list[NotificationOut]:
    """Who was told of an incident, how, when, and whether it went out."""
    return service.notifications_of(session, incident_id, principal.scope)


# --- crews ------------------------------------------------------------------------------------

@router.get("/crews", response_model=list[CrewOut])
def list_crews(session: SessionDep, principal: CurrentPrincipal) -> list[CrewOut]:
    """Đội bảo trì / maintenance crews of the caller's region, with who is on call now."""
    return [service.crew_out(session, c) for c in service.list_crews(session, principal.scope)]


@router.get("/crews/{crew_id}", response_model=CrewOut)
def get_crew(crew_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> CrewOut:
    return service.crew_out(session, service.get_crew(session, crew_id, principal.scope))


@router.post("/crews", response_model=CrewOut, status_code=status.HTTP_201_CREATED)
def create_crew(data: CrewIn, request: Request, session: SessionDep, principal: TechnicianPrincipal) -> CrewOut:
    """A crew for a region: told of the incidents there that no crew further down takes."""
    crew = service.create_crew(session, data, _actor(principal))
    setattr(request.state, TARGET_STATE, f"crew_id={crew.id}")
    return service.crew_out(session, crew)


@router.post("/crews/{crew_id}/members", response_model=MemberOut, status_code=status.HTTP_201_CREATED)
def add_member(crew_id: RowId, data: MemberIn, request: Request, session: SessionDep,
               principal: TechnicianPrincipal) -> MemberOut:
    """A member and the channels they are told on (apprise URLs; shown back without secrets)."""
    member = service.add_member(session, crew_id, data, _actor(principal))
    setattr(request.state, TARGET_STATE, f"crew_id={crew_id}, member_id={member.id}")
    return service.member_out(member)


@router.delete("/crews/{crew_id}/members/{member_id}", response_model=MemberOut)
def remove_member(crew_id: RowId, member_id: RowId, request: Request, session: SessionDep,
                  principal: TechnicianPrincipal) -> MemberOut:
    member = service.remove_member(session, crew_id, member_id, _actor(principal))
    setattr(request.state, TARGET_STATE, f"crew_id={crew_id}, member_id={member.id}")
    return service.member_out(member)


# --- the one-tap acknowledge link -------------------------------------------------------------
#
# Opening the link shows the incident and one button; the button acknowledges. Not the GET
# itself: chat apps (Telegram, Zalo) and mail scanners open links to preview them, and would
# acknowledge every incident before anyone had read it.

def _wants_page(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def _refused(request: Request, exc: LoaError) -> HTMLResponse:
    """A browser gets a page it can show; any other client the API's usual error."""
    if not _wants_page(request):
        raise exc
    return HTMLResponse(notify.link_page(exc.message_vi, [exc.message_en]), status_code=exc.status_code)


@router.get("/ack/{token}", response_class=HTMLResponse)
def ack_page(token: Annotated[str, Path(max_length=64)], request: Request, session: SessionDep) -> HTMLResponse:
    """The page an acknowledge link opens: no sign-in, the link is the credential."""
    try:
        incident = notify.incident_of_link(session, token)
    except LoaError as exc:
        return _refused(request, exc)
    return HTMLResponse(notify.link_page(f"Sự cố / incident #{incident.id}", incident.summary.split("\n"),
                                         form_action=f"/api/v1/ack/{token}"))


@router.post("/ack/{token}", response_class=HTMLResponse)
def ack_by_link(token: Annotated[str, Path(max_length=64)], request: Request, session: SessionDep) -> HTMLResponse:
    """Acknowledge, in the name of the person the link was sent to. Good once."""
    try:
        incident = notify.acknowledge_by_link(session, token)
    except LoaError as exc:
        return _refused(request, exc)
    setattr(request.state, TARGET_STATE, f"incident_id={incident.id}, by={incident.acknowledged_by}")
    return HTMLResponse(notify.link_page("Đã nhận / acknowledged",
                                         [f"Sự cố / incident #{incident.id}: {incident.summary}",
                                          f"{incident.acknowledged_by} — {local_text(incident.acknowledged_at)}"]))
