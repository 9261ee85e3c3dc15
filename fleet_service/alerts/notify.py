"""Telling the crews: who is told of which incident and when (the crew of its region, its
on-call rotation and escalation steps), the messages, and their delivery through apprise with
retries. The leading worker's workflow; every step is in the database (``notifications``).

A turn (every NOTIFY_INTERVAL_S):

1. plan: for each incident that is raised (not silenced, not a member of a group), the crew of
   its region is found (the nearest crew up the region tree). While it is open, each escalation
   step whose time has come, and each reminder of a critical one, becomes one notification per
   channel of each person it names; once it is resolved, those told are told so. Each has a
   unique ``dedupe_key``: planned once, whatever restarts or second workers;
2. what was planned and not sent is cancelled once the incident is acknowledged or resolved;
3. deliver: each pending notification is sent (apprise, in a thread); a failure is retried
   with backoff, and given up after NOTIFY_GIVE_UP attempts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from fleet_service.alerts.evaluator import matching_silence
from fleet_service.alerts.models import (Crew, CrewMember, Incident, IncidentScope, IncidentState, Notification,
                                         NotificationState, Silence)
from fleet_service.alerts.rules import CHECK_FIRST, TITLES, RuleKind, Severity
from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.errors import Conflict, NotFound
from fleet_service.registry.models import Region, Station
from fleet_service.timefmt import local_text

log = logging.getLogger(__name__)

# Escalations are minutes apart and retries at least 5 s; raised and resolved incidents wake it.
NOTIFY_INTERVAL_S = 5.0
NOTIFY_BATCH = 50
NOTIFY_GIVE_UP = 8
RETRY_MIN_S = 5.0
RETRY_MAX_S = 600.0
# How long a message's acknowledge link works.
ACK_LINK_VALID = timedelta(days=2)
# Resolutions are told for incidents resolved this recently (a worker down for longer does not
# send a backlog of old news when it comes back).
RESOLVED_TOLD_WITHIN = timedelta(hours=6)
DEFAULT_ESCALATION = [{"after_min": 0, "to": "on_call"}, {"after_min": 15, "to": "next"},
                      {"after_min": 30, "to": "engineers"}]
STEP_TARGETS = ("on_call", "next", "engineers", "all")


def public_url(settings: Settings) -> str:
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = settings.api_host if settings.api_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.api_port}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def on_call(crew: Crew, members: list[CrewMember], now: datetime, offset: int = 0) -> CrewMember | None:
    """Who is on call at ``now`` (``offset`` 1: the next in the rotation)."""
    rota = sorted((m for m in members if m.active and not m.engineer), key=lambda m: (m.position, m.id))
    if not rota:
        return None
    # Before the rotation starts, its first member's turn (not the last's, as a negative turn would).
    turns = max(0, int((now - crew.rotation_start).total_seconds() // (crew.rotation_days * 86400)))
    return rota[(turns + offset) % len(rota)]


def recipients(step_to: str, crew: Crew, members: list[CrewMember], now: datetime) -> list[CrewMember]:
    if step_to == "on_call":
        found = on_call(crew, members, now)
        return [found] if found else []
    if step_to == "next":
        found, current = on_call(crew, members, now, 1), on_call(crew, members, now)
        return [found] if found and found is not current else []
    if step_to == "engineers":
        return [m for m in members if m.active and m.engineer]
    return [m for m in members if m.active]


@dataclass(frozen=True, slots=True)
class Message:
    title: str
    body: str


def compose(incident: Incident, reason: str, where: str, map_url: str | None, ack_url: str | None) -> Message:
    """What a crew reads: Vietnamese first, English alongside."""
    kind = RuleKind(incident.kind)
    vi, en = TITLES[kind]
    check_vi, check_en = CHECK_FIRST[kind]
    severity = {Severity.CRITICAL.value: "KHẨN / CRITICAL", Severity.MAJOR.value: "NẶNG / MAJOR"}.get(
        incident.severity, "NHẸ / MINOR")
    prefix = {"raised": "", "escalated": "[Chưa ai nhận / not acknowledged] ",
              "reminder": "[Nhắc lại / reminder] ", "resolved": "[Đã hết / resolved] "}[reason]
    subject = incident.receiver_id or where
    title = f"{prefix}{severity} {vi} / {en}: {subject}"
    lines = [incident.summary,
             f"Ở đâu / where: {where}" + (f" — {map_url}" if map_url else ""),
             f"Từ lúc / since: {local_text(incident.started_at)}"]
    if incident.value is not None:
        lines.append(f"Giá trị / value: {incident.value}")
    if reason == "resolved":
        lines.append(f"Đã hết lúc / resolved at: {local_text(incident.resolved_at)}"
                     + (f" ({incident.resolved_by})" if incident.resolved_by else ""))
    else:
        lines.append(f"Kiểm tra trước / check first: {check_vi} / {check_en}")
        if ack_url:
            lines.append(f"Nhận xử lý / acknowledge: {ack_url}")
    lines.append(f"Sự cố / incident #{incident.id}")
    return Message(title, "\n".join(lines))


def redacted(channel: str) -> str:
    """A channel as people may see it: apprise's own privacy form (no passwords or tokens)."""
    import apprise

    plugin = apprise.Apprise.instantiate(channel, suppress_exceptions=True)
    if not plugin:
        return "? (kênh không hợp lệ / not a valid channel)"
    return str(plugin.url(privacy=True)).split("?", 1)[0]


Sender = Callable[[str, Message], str | None]  # (channel, message) -> None, or why it failed


def apprise_sender(channel: str, message: Message) -> str | None:
    """Send through apprise; None once sent, otherwise what apprise logged."""
    import apprise

    with apprise.LogCapture(level=logging.WARNING) as captured:
        notifier = apprise.Apprise()
        if not notifier.add(channel):
            return "kênh không hợp lệ / not a channel apprise knows"
        if notifier.notify(title=message.title, body=message.body, body_format=apprise.NotifyFormat.TEXT):
            return None
        return (captured.getvalue().strip() or "apprise: not sent")[-1000:]  # type: ignore[union-attr]


# Made once: an alias is costly to build (its columns are adapted when first used).
_SENT, _RESOLUTION = aliased(Notification), aliased(Notification)


class Planner:
    """Step 1 and 2 of a turn, in one transaction. What a turn finds nothing to do for costs it
    two queries: the incidents to plan for, and whether anything is pending."""

    def __init__(self, session: Session, now: datetime) -> None:
        self.session = session
        self.now = now
        self.planned = 0
        self._crews: list[Crew] | None = None
        self._members: dict[int, list[CrewMember]] = {}
        self._silences: list[Silence] | None = None
        self._known: set[str] = set()  # dedupe keys already planned for the incidents at hand

    @property
    def crews(self) -> list[Crew]:
        if self._crews is None:
            self._crews = list(self.session.scalars(select(Crew)))
            members = list(self.session.scalars(select(CrewMember)))
            self._members = {crew.id: [m for m in members if m.crew_id == crew.id] for crew in self._crews}
        return self._crews

    @property
    def silences(self) -> list[Silence]:
        if self._silences is None:
            self._silences = list(self.session.scalars(select(Silence).where(Silence.starts_at <= self.now,
                                                                             Silence.ends_at > self.now)))
        return self._silences

    def crew_for(self, region_path: str) -> Crew | None:
        ids = [int(p) for p in region_path.split("/") if p]
        depth = {region_id: i for i, region_id in enumerate(ids)}
        best: tuple[int, Crew] | None = None
        for crew in self.crews:
            d = -1 if crew.region_id is None else depth.get(crew.region_id)
            if d is not None and (best is None or d > best[0]):
                best = (d, crew)
        return best[1] if best else None

    def run(self) -> int:
        told = (Incident.suppressed_by.is_(None), Incident.parent_id.is_(None))
        silenced: list[int] = []
        live = list(self.session.scalars(select(Incident).where(*told, Incident.state == IncidentState.OPEN.value)))
        # Resolved recently, and told on a channel that has not been told of the resolution.
        sent, resolved = _SENT, _RESOLUTION
        to_tell = list(self.session.scalars(select(Incident).where(
            *told, Incident.state == IncidentState.RESOLVED.value, Incident.resolved_at > self.now - RESOLVED_TOLD_WITHIN,
            select(sent.id).where(sent.incident_id == Incident.id, sent.state == NotificationState.SENT.value,
                                  sent.reason != "resolved",
                                  ~select(resolved.id).where(resolved.incident_id == Incident.id,
                                                             resolved.reason == "resolved",
                                                             resolved.channel == sent.channel).exists()).exists())))
        if live or to_tell:
            self._known = set(self.session.scalars(select(Notification.dedupe_key).where(
                Notification.incident_id.in_([i.id for i in live + to_tell]))))
        for incident in live:
            crew = self.crew_for(incident.region_path)
            if crew is None:
                continue
            # Silenced after it was raised: nobody is told more of it while the silence lasts.
            if matching_silence(self.silences, incident.kind, incident.receiver_id, incident.station_id,
                                incident.region_path) is not None:
                silenced.append(incident.id)
                continue
            self._steps(incident, crew)
        for incident in to_tell:
            self._resolution(incident)
        pending = self.session.scalar(select(Notification.id).where(
            Notification.state == NotificationState.PENDING.value, Notification.reason != "resolved").limit(1))
        if pending is not None:
            self.session.execute(
                update(Notification)
                .where(Notification.state == NotificationState.PENDING.value, Notification.reason != "resolved",
                       or_(Notification.incident_id.in_(select(Incident.id).where(Incident.state != IncidentState.OPEN.value)),
                           Notification.incident_id.in_(silenced)))
                .values(state=NotificationState.CANCELLED.value)
                .execution_options(synchronize_session=False))
        return self.planned

    def _steps(self, incident: Incident, crew: Crew) -> None:
        members = self._members[crew.id]
        age_min = (self.now - incident.opened_at).total_seconds() / 60
        for i, step in enumerate(crew.escalation or DEFAULT_ESCALATION):
            if age_min < step.get("after_min", 0):
                break
            for member in recipients(step.get("to", "on_call"), crew, members, incident.opened_at):
                self._plan(incident, "raised" if i == 0 else "escalated", f"step{i}", member)
        if incident.severity == Severity.CRITICAL.value and crew.reminder_min > 0:
            reminders = int(age_min // crew.reminder_min)
            member = on_call(crew, members, self.now)
            if reminders >= 1 and member is not None:
                self._plan(incident, "reminder", f"reminder{reminders}", member)

    def _resolution(self, incident: Incident) -> None:
        told = self.session.execute(
            select(Notification.member_id, Notification.recipient, Notification.channel).distinct()
            .where(Notification.incident_id == incident.id, Notification.state == NotificationState.SENT.value,
                   Notification.reason != "resolved")).all()
        for member_id, recipient, channel in told:
            key = f"{incident.id}:resolved:{token_hash(channel)[:16]}"
            self._insert(Notification(incident_id=incident.id, reason="resolved", dedupe_key=key, member_id=member_id,
                                      recipient=recipient, channel=channel, available_at=self.now))

    def _plan(self, incident: Incident, reason: str, step: str, member: CrewMember) -> None:
        for n, channel in enumerate(member.channels or []):
            key = f"{incident.id}:{step}:{member.id}:{n}"
            self._insert(Notification(incident_id=incident.id, reason=reason, dedupe_key=key, member_id=member.id,
                                      recipient=member.name, channel=channel, available_at=self.now))

    def _insert(self, notification: Notification) -> None:
        if notification.dedupe_key in self._known:
            return
        try:
            with self.session.begin_nested():
                self.session.add(notification)
                self.session.flush()
        except IntegrityError:
            return  # planned by another worker in the meantime
        self._known.add(notification.dedupe_key)
        self.planned += 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    notification_id: int
    channel: str
    message: Message


class Notifier:
    """The leading worker's loop: plan, cancel, deliver."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *,
                 sender: Sender = apprise_sender, interval_s: float = NOTIFY_INTERVAL_S) -> None:
        self._sessions = sessions
        self._base_url = public_url(settings)
        self._sender = sender
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.sent = 0
        self.failures = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.turn)
            except Exception:  # the database is down: the next turn tries again
                log.exception("notifying the crews failed; tried again at the next turn")
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    def turn(self, now: datetime | None = None) -> None:
        now = now or utcnow()
        with session_scope(self._sessions) as session:
            Planner(session, now).run()
        while True:
            outgoing = self._take(now)
            if not outgoing:
                return
            for item in outgoing:
                error = self._sender(item.channel, item.message)
                self._settle(item.notification_id, error, now)

    def _take(self, now: datetime) -> list[Outgoing]:
        """Due notifications, each with its message (and a fresh acknowledge link) composed."""
        with session_scope(self._sessions) as session:
            due = list(session.scalars(
                select(Notification).where(Notification.state == NotificationState.PENDING.value,
                                           Notification.available_at <= now)
                .order_by(Notification.id).limit(NOTIFY_BATCH)))
            out = []
            for notification in due:
                incident = session.get(Incident, notification.incident_id)
                assert incident is not None
                where, map_url = self._where(session, incident)
                ack_url = None
                if notification.reason != "resolved":
                    token = secrets.token_urlsafe(24)
                    notification.ack_token_hash = token_hash(token)
                    notification.ack_expires_at = now + ACK_LINK_VALID
                    ack_url = f"{self._base_url}/api/v1/ack/{token}"
                out.append(Outgoing(notification.id, notification.channel,
                                    compose(incident, notification.reason, where, map_url, ack_url)))
                # Taken: another turn (or worker) does not take it while it is being sent.
                notification.available_at = now + timedelta(seconds=RETRY_MAX_S)
            return out

    def _where(self, session: Session, incident: Incident) -> tuple[str, str | None]:
        station = session.get(Station, incident.station_id) if incident.station_id else None
        region = session.get(Region, incident.region_id) if incident.region_id else None
        parts = [p for p in (station.name if station else None, region.name if region else None) if p]
        map_url = None
        if station is not None and station.latitude is not None and station.longitude is not None:
            map_url = f"https://www.openstreetmap.org/?mlat={station.latitude:.5f}&mlon={station.longitude:.5f}#map=17/" \
                      f"{station.latitude:.5f}/{station.longitude:.5f}"
        return (", ".join(parts) or "—"), map_url

    def _settle(self, notification_id: int, error: str | None, now: datetime) -> None:
        with session_scope(self._sessions) as session:
            notification = session.get(Notification, notification_id)
            if notification is None:
                return
            notification.attempts += 1
            if error is None:
                notification.state, notification.sent_at, notification.last_error = NotificationState.SENT.value, utcnow(), None
                self.sent += 1
                channel_recovered(session, notification.channel, now)
                return
            self.failures += 1
            notification.last_error = error[:2000]
            if notification.attempts >= NOTIFY_GIVE_UP:
                notification.state = NotificationState.FAILED.value
                log.error("notification %d to %s given up after %d attempts: %s", notification.id,
                          redacted(notification.channel), notification.attempts, error)
                channel_failing(session, notification, error, now)
                return
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (notification.attempts - 1))
            notification.available_at = now + timedelta(seconds=delay)
            log.warning("notification %d to %s failed (attempt %d), retrying in %.0f s: %s", notification.id,
                        redacted(notification.channel), notification.attempts, delay, error)


def _channel_key(channel: str) -> str:
    return f"{RuleKind.CHANNEL_FAILED.value}:{token_hash(channel)[:32]}"


def channel_failing(session: Session, notification: Notification, error: str, now: datetime) -> None:
    """A channel that failed every attempt raises an incident of its own, for the crew of the
    whole service (its admins): a crew member nobody can reach is a fault like any other."""
    key = _channel_key(notification.channel)
    if session.scalar(select(Incident.id).where(Incident.open_key == key)) is not None:
        return
    vi, en = TITLES[RuleKind.CHANNEL_FAILED]
    incident = Incident(kind=RuleKind.CHANNEL_FAILED.value, severity=Severity.MAJOR.value,
                        scope=IncidentScope.SERVICE.value, region_path="/", open_key=key,
                        summary=f"{vi} / {en}: {notification.recipient} — {redacted(notification.channel)}"[:500],
                        value=error[:64], detail={"member_id": notification.member_id, "error": error[:1000]},
                        started_at=notification.created_at, opened_at=now)
    try:
        with session.begin_nested():
            session.add(incident)
            session.flush()
    except IntegrityError:
        pass  # raised by another worker in the meantime


def channel_recovered(session: Session, channel: str, now: datetime) -> None:
    session.execute(update(Incident).where(Incident.open_key == _channel_key(channel))
                    .values(state=IncidentState.RESOLVED.value, resolved_at=now, open_key=None)
                    .execution_options(synchronize_session=False))


def _link(session: Session, token: str, now: datetime) -> tuple[Notification, Incident]:
    notification = session.scalar(select(Notification).where(Notification.ack_token_hash == token_hash(token)))
    if notification is None or notification.ack_expires_at is None or notification.ack_expires_at <= now:
        raise NotFound("Liên kết không hợp lệ hoặc đã hết hạn", "the link is not valid or has expired")
    if notification.ack_used_at is not None:
        raise Conflict("Liên kết này đã được dùng", "this link has been used already")
    incident = session.get(Incident, notification.incident_id)
    assert incident is not None
    return notification, incident


def incident_of_link(session: Session, token: str, now: datetime | None = None) -> Incident:
    return _link(session, token, now or utcnow())[1]


def acknowledge_by_link(session: Session, token: str, now: datetime | None = None) -> Incident:
    """The one-tap link: acknowledges the incident in the name of the person it was sent to.
    Good once, until it expires."""
    now = now or utcnow()
    notification, incident = _link(session, token, now)
    if incident.state == IncidentState.RESOLVED.value:
        raise Conflict(f"Sự cố #{incident.id} đã đóng", f"incident #{incident.id} is resolved already")
    notification.ack_used_at = now
    if incident.state == IncidentState.OPEN.value:
        members = [incident, *session.scalars(select(Incident).where(
            Incident.parent_id == incident.id, Incident.state == IncidentState.OPEN.value))]
        for one in members:
            one.state, one.acknowledged_at, one.acknowledged_by = (IncidentState.ACKNOWLEDGED.value, now,
                                                                  f"{notification.recipient} (link)")
    return incident


def link_page(title: str, lines: Iterable[str], form_action: str | None = None) -> str:
    """A small page a phone shows well, without scripts or outside resources."""
    from html import escape

    body = "".join(f"<p>{escape(line)}</p>" for line in lines)
    form = (f'<form method="post" action="{escape(form_action)}"><button type="submit" '
            f'style="font-size:1.4em;padding:.6em 1.2em">Tôi nhận xử lý / I am on it</button></form>'
            if form_action else "")
    return (f'<!doctype html><html lang="vi"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{escape(title)}</title></head>'
            f'<body style="font-family:sans-serif;max-width:36em;margin:1em auto;padding:0 1em">'
            f'<h1 style="font-size:1.3em">{escape(title)}</h1>{body}{form}</body></html>')
