"""What people do with alerts: read incidents, acknowledge and resolve them, silence a
receiver, station or region for planned work, and set a region's rules. The API and the CLI
both come through here; the leading worker's evaluation (alerts.evaluator) raises and clears."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.alerts.evaluator import effective_rules
from fleet_service.alerts.models import Crew, CrewMember, Incident, IncidentState, Notification, RuleOverride, Silence
from fleet_service.alerts.notify import DEFAULT_ESCALATION, on_call, redacted
from fleet_service.alerts.rules import DEFAULT_RULES, RuleKind
from fleet_service.alerts.schemas import (CrewIn, CrewOut, IncidentOut, MemberIn, MemberOut, NotificationOut, RuleIn,
                                          RuleOut, SilenceIn, SilenceOut)
from fleet_service.db import utcnow
from fleet_service.errors import Conflict, Forbidden, Invalid, NotFound
from fleet_service.registry import service as registry
from fleet_service.registry.models import Region
from fleet_service.scope import RegionScope

# Fields of a rule a region may set.
RULE_FIELDS = ("severity", "pending_s", "hold_s", "threshold", "enabled", "group_wait_s")


@dataclass(frozen=True, slots=True)
class Actor:
    username: str
    scope: RegionScope


def incident_out(incident: Incident) -> IncidentOut:
    return IncidentOut.model_validate(incident, from_attributes=True)


def list_incidents(session: Session, scope: RegionScope, *, states: Sequence[str] = (),
                   kinds: Sequence[str] = (), receiver_id: str | None = None, station_id: int | None = None,
                   region_id: int | None = None, parent_id: int | None = None, members: bool = False,
                   limit: int = 100, offset: int = 0) -> list[Incident]:
    """Newest first. Members of a grouped incident only with ``members`` (or when asked for one
    receiver, or for a group's members): the group stands for them. ``region_id``: what happened
    in that region's subtree."""
    query = select(Incident).where(scope.path_clause(Incident.region_path))
    if states:
        query = query.where(Incident.state.in_(list(states)))
    if kinds:
        query = query.where(Incident.kind.in_(list(kinds)))
    if receiver_id is not None:
        query = query.where(Incident.receiver_id == receiver_id)
    if station_id is not None:
        query = query.where(Incident.station_id == station_id)
    if region_id is not None:
        region = registry.get_region(session, region_id, scope=scope)
        query = query.where(RegionScope(region.path).path_clause(Incident.region_path))
    if parent_id is not None:
        query = query.where(Incident.parent_id == parent_id)
    if not members and receiver_id is None and parent_id is None:
        query = query.where(Incident.parent_id.is_(None))
    return list(session.scalars(query.order_by(Incident.opened_at.desc(), Incident.id.desc())
                                .limit(limit).offset(offset)))


def get_incident(session: Session, incident_id: int, scope: RegionScope) -> Incident:
    incident = session.get(Incident, incident_id)
    if incident is None or not scope.contains(incident.region_path):
        raise NotFound(f"Không có sự cố {incident_id}", f"no incident {incident_id}")
    return incident


def _with_members(session: Session, incident: Incident) -> list[Incident]:
    return [incident, *session.scalars(select(Incident).where(
        Incident.parent_id == incident.id, Incident.state != IncidentState.RESOLVED.value))]


def acknowledge(session: Session, incident_id: int, actor: Actor, note: str | None = None) -> Incident:
    """Someone is on it: reminders and escalation stop. A grouped incident's members with it."""
    incident = get_incident(session, incident_id, actor.scope)
    if incident.state == IncidentState.RESOLVED.value:
        raise Conflict(f"Sự cố {incident_id} đã đóng", f"incident {incident_id} is resolved already")
    if incident.state == IncidentState.ACKNOWLEDGED.value:
        return incident
    now = utcnow()
    for one in _with_members(session, incident):
        if one.state == IncidentState.OPEN.value:
            one.state, one.acknowledged_at, one.acknowledged_by = IncidentState.ACKNOWLEDGED.value, now, actor.username
    if note:
        incident.note = note
    return incident


def resolve(session: Session, incident_id: int, actor: Actor, note: str | None = None) -> Incident:
    """Closed by hand (with what was done). Its condition, if it still holds, raises nothing new
    until it has cleared: the crew said it is dealt with."""
    incident = get_incident(session, incident_id, actor.scope)
    if incident.state == IncidentState.RESOLVED.value:
        raise Conflict(f"Sự cố {incident_id} đã đóng", f"incident {incident_id} is resolved already")
    now = utcnow()
    for one in _with_members(session, incident):
        one.state, one.resolved_at, one.resolved_by, one.open_key = IncidentState.RESOLVED.value, now, actor.username, None
    if note:
        incident.note = note
    return incident


# --- silences ---------------------------------------------------------------------------------

def _silence_path(session: Session, data: SilenceIn, scope: RegionScope) -> None:
    """The subject must be the caller's (NotFound otherwise, as for any object out of scope)."""
    if data.receiver_id is not None:
        registry.get_receiver(session, data.receiver_id, scope=scope)
    elif data.station_id is not None:
        registry.get_station(session, data.station_id, scope=scope)
    elif data.region_id is not None:
        registry.get_region(session, data.region_id, scope=scope)


def create_silence(session: Session, data: SilenceIn, actor: Actor) -> Silence:
    _silence_path(session, data, actor.scope)
    now = utcnow()
    if data.ends_at <= now:
        raise Conflict("Thời điểm kết thúc đã qua", "the silence would end in the past")
    silence = Silence(receiver_id=data.receiver_id, station_id=data.station_id, region_id=data.region_id,
                      kinds=[k.value for k in data.kinds] if data.kinds else None, reason=data.reason,
                      starts_at=data.starts_at or now, ends_at=data.ends_at, created_by=actor.username)
    session.add(silence)
    session.flush()
    return silence


def list_silences(session: Session, scope: RegionScope, *, current_only: bool = True) -> list[Silence]:
    query = select(Silence).order_by(Silence.ends_at)
    if current_only:
        query = query.where(Silence.ends_at > utcnow())
    return [s for s in session.scalars(query) if _silence_in_scope(session, s, scope)]


def _silence_in_scope(session: Session, silence: Silence, scope: RegionScope) -> bool:
    try:
        _silence_path(session, SilenceIn.model_construct(receiver_id=silence.receiver_id, station_id=silence.station_id,
                                                         region_id=silence.region_id), scope)
    except NotFound:
        return False
    return True


def end_silence(session: Session, silence_id: int, actor: Actor) -> Silence:
    silence = session.get(Silence, silence_id)
    if silence is None or not _silence_in_scope(session, silence, actor.scope):
        raise NotFound(f"Không có lệnh tạm im {silence_id}", f"no silence {silence_id}")
    now = utcnow()
    if silence.ends_at > now:
        silence.ends_at = max(now, silence.starts_at)
    return silence


def silence_out(silence: Silence) -> SilenceOut:
    return SilenceOut.model_validate(silence, from_attributes=True)


# --- rules ------------------------------------------------------------------------------------

def _region_path(session: Session, region_id: int | None, scope: RegionScope) -> str:
    if region_id is None:
        return "/"
    return registry.get_region(session, region_id, scope=scope).path


def rules_for(session: Session, region_id: int | None, scope: RegionScope) -> list[RuleOut]:
    """The rules in force in a region (None: the whole service), and where each value comes from."""
    path = _region_path(session, region_id, scope)
    overrides = list(session.scalars(select(RuleOverride)))
    rules = effective_rules(overrides, path)
    on_path = [0, *[int(p) for p in path.split("/") if p]]
    out = []
    for kind, rule in rules.items():
        source = {name: "default" for name in RULE_FIELDS}
        for region_key in on_path:
            for o in overrides:
                if o.kind == kind.value and o.region_key == region_key:
                    for name in RULE_FIELDS:
                        if getattr(o, name) is not None:
                            source[name] = str(region_key)
        out.append(RuleOut(kind=kind, severity=rule.severity, pending_s=rule.pending_s, hold_s=rule.hold_s,
                           threshold=rule.threshold, enabled=rule.enabled, group_wait_s=rule.group_wait_s,
                           source=source))
    return out


def _evaluated(kind: RuleKind) -> None:
    if kind not in DEFAULT_RULES:
        raise Conflict(f"'{kind}' không phải quy tắc đặt được", f"'{kind}' is not a rule that can be set")


def set_rule(session: Session, kind: RuleKind, region_id: int | None, data: RuleIn, actor: Actor) -> RuleOut:
    """Set some of a rule's fields for a region (None: the whole service, admins of the whole
    fleet only). Fields given as null are not changed; ``reset_rule`` clears them."""
    _evaluated(kind)
    if region_id is None and actor.scope.restricted:
        raise Forbidden("Chỉ quản trị toàn hệ thống mới đặt quy tắc chung",
                        "only a whole-fleet admin sets the service-wide rules")
    _region_path(session, region_id, actor.scope)
    if DEFAULT_RULES[kind].threshold is None and data.threshold is not None:
        raise Conflict(f"Quy tắc {kind} không có ngưỡng", f"the rule {kind} has no threshold")
    region_key = region_id or 0
    override = session.scalar(select(RuleOverride).where(RuleOverride.region_key == region_key,
                                                         RuleOverride.kind == kind.value))
    if override is None:
        override = RuleOverride(region_id=region_id, region_key=region_key, kind=kind.value, updated_by=actor.username)
        session.add(override)
    for name in RULE_FIELDS:
        value = getattr(data, name)
        if value is not None:
            setattr(override, name, value.value if name == "severity" else value)
    override.updated_by, override.updated_at = actor.username, utcnow()
    session.flush()
    return next(r for r in rules_for(session, region_id, actor.scope) if r.kind is kind)


def reset_rule(session: Session, kind: RuleKind, region_id: int | None, actor: Actor) -> RuleOut:
    """The region takes the rule from above again."""
    _evaluated(kind)
    if region_id is None and actor.scope.restricted:
        raise Forbidden("Chỉ quản trị toàn hệ thống mới đặt quy tắc chung",
                        "only a whole-fleet admin sets the service-wide rules")
    _region_path(session, region_id, actor.scope)
    override = session.scalar(select(RuleOverride).where(RuleOverride.region_key == (region_id or 0),
                                                         RuleOverride.kind == kind.value))
    if override is not None:
        session.delete(override)
        session.flush()
    return next(r for r in rules_for(session, region_id, actor.scope) if r.kind is kind)


# --- crews ------------------------------------------------------------------------------------

def _crew_in_scope(crew: Crew, session: Session, scope: RegionScope) -> bool:
    if crew.region_id is None:
        return scope.whole_fleet
    region = session.get(Region, crew.region_id)
    return region is not None and scope.contains(region.path)


def _check_channels(channels: list[str]) -> None:
    import apprise

    for channel in channels:
        if not apprise.Apprise.instantiate(channel, suppress_exceptions=True):
            raise Invalid(f"Kênh không hợp lệ: {redacted(channel)}",
                          f"not a channel apprise can send to: {redacted(channel)}")


def create_crew(session: Session, data: CrewIn, actor: Actor) -> Crew:
    if data.region_id is None and actor.scope.restricted:
        raise Forbidden("Chỉ quản trị toàn hệ thống mới lập đội chung", "only a whole-fleet admin makes the service's crew")
    if data.region_id is not None:
        registry.get_region(session, data.region_id, scope=actor.scope)
    crew = Crew(name=data.name, region_id=data.region_id, rotation_start=data.rotation_start or utcnow(),
                rotation_days=data.rotation_days, reminder_min=data.reminder_min,
                escalation=[s.model_dump() for s in data.escalation] if data.escalation else DEFAULT_ESCALATION)
    session.add(crew)
    session.flush()
    return crew


def get_crew(session: Session, crew_id: int, scope: RegionScope) -> Crew:
    crew = session.get(Crew, crew_id)
    if crew is None or not _crew_in_scope(crew, session, scope):
        raise NotFound(f"Không có đội {crew_id}", f"no crew {crew_id}")
    return crew


def list_crews(session: Session, scope: RegionScope) -> list[Crew]:
    return [c for c in session.scalars(select(Crew).order_by(Crew.id)) if _crew_in_scope(c, session, scope)]


def add_member(session: Session, crew_id: int, data: MemberIn, actor: Actor) -> CrewMember:
    get_crew(session, crew_id, actor.scope)
    _check_channels(data.channels)
    member = CrewMember(crew_id=crew_id, name=data.name, position=data.position, engineer=data.engineer,
                        channels=list(data.channels), active=True)
    session.add(member)
    session.flush()
    return member


def remove_member(session: Session, crew_id: int, member_id: int, actor: Actor) -> CrewMember:
    get_crew(session, crew_id, actor.scope)
    member = session.get(CrewMember, member_id)
    if member is None or member.crew_id != crew_id:
        raise NotFound(f"Không có thành viên {member_id}", f"no member {member_id} in crew {crew_id}")
    member.active = False  # kept: the notifications sent to them still name them
    return member


def member_out(member: CrewMember) -> MemberOut:
    return MemberOut(id=member.id, name=member.name, position=member.position, engineer=member.engineer,
                     channels=[redacted(c) for c in member.channels], active=member.active)


def crew_out(session: Session, crew: Crew) -> CrewOut:
    members = list(session.scalars(select(CrewMember).where(CrewMember.crew_id == crew.id)
                                   .order_by(CrewMember.position, CrewMember.id)))
    current = on_call(crew, members, utcnow())
    return CrewOut(id=crew.id, name=crew.name, region_id=crew.region_id, rotation_start=crew.rotation_start,
                   rotation_days=crew.rotation_days, escalation=crew.escalation, reminder_min=crew.reminder_min,
                   members=[member_out(m) for m in members], on_call=current.name if current else None)


def notifications_of(session: Session, incident_id: int, scope: RegionScope) -> list[NotificationOut]:
    incident = get_incident(session, incident_id, scope)
    rows = session.scalars(select(Notification).where(Notification.incident_id == incident.id).order_by(Notification.id))
    return [NotificationOut(id=n.id, incident_id=n.incident_id, reason=n.reason, recipient=n.recipient,
                            channel=redacted(n.channel), state=n.state, attempts=n.attempts, last_error=n.last_error,
                            created_at=n.created_at, sent_at=n.sent_at, acknowledged_with_link=n.ack_used_at is not None)
            for n in rows]
