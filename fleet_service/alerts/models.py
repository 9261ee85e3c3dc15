"""Alert tables: rule overrides per region, the conditions being timed (pending, hold-down),
incidents, and silences. Everything the leading worker needs to carry on after a restart is
here; nothing is kept only in a process's memory."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from fleet_service.db import Base, UTCDateTime, utcnow


class RuleOverride(Base):
    """A region's own setting of one rule (NULL region: the whole service). Fields left NULL keep
    what the region above says, and at the top the shipped default (alerts/rules.py)."""

    __tablename__ = "alert_rule_overrides"
    __table_args__ = (UniqueConstraint("region_key", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    # region_id, or 0 for the whole service: a unique key that NULL would not give.
    region_key: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str | None] = mapped_column(String(16))
    pending_s: Mapped[int | None]
    hold_s: Mapped[int | None]
    threshold: Mapped[float | None] = mapped_column(Float)
    enabled: Mapped[bool | None] = mapped_column(Boolean)
    group_wait_s: Mapped[int | None]
    updated_by: Mapped[str] = mapped_column(String(100))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertCondition(Base):
    """A rule's condition on one receiver, timed: held since ``active_since``; ``cleared_at`` set
    while it has stopped holding (the hold-down runs from there). Deleted once cleared for the
    rule's hold-down."""

    __tablename__ = "alert_conditions"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    active_since: Mapped[datetime] = mapped_column(UTCDateTime)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    value: Mapped[str | None] = mapped_column(String(64))
    incident_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id", ondelete="SET NULL"), index=True)


class ReceiverCount(Base):
    """What the rules over events count of a receiver per period (alerts/counts.py): boots and
    stream underruns per ten minutes, stream bytes per month of the stations' calendar. Added
    to by the leading worker every few seconds; old periods are deleted."""

    __tablename__ = "alert_counts"

    receiver_id: Mapped[str] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


Index("ix_alert_counts_kind_period", ReceiverCount.kind, ReceiverCount.period_start)


class IncidentState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class IncidentScope(StrEnum):
    RECEIVER = "receiver"
    STATION = "station"  # many receivers of one station at once
    REGION = "region"    # many receivers of one commune (a station's region) at once
    SERVICE = "service"  # the service itself (a notification channel failing), for its admins


class Incident(Base):
    """One fault of one receiver (or of a station or commune, grouping its receivers' own), from
    the moment it was raised to its resolution. At most one unresolved incident per rule and
    subject: ``open_key`` is unique while it is set and emptied on resolution, so that neither a
    restart nor two workers that both believe they lead raise it twice."""

    __tablename__ = "incidents"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str] = mapped_column(String(16))
    receiver_id: Mapped[str | None] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"), index=True)
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id", ondelete="SET NULL"), index=True)
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id", ondelete="SET NULL"), index=True)
    # The region path of where it happened when raised: scope checks without a join, and an
    # incident stays where it happened if the region tree changes later.
    region_path: Mapped[str] = mapped_column(String(1000), index=True)
    open_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=IncidentState.OPEN.value, index=True)
    # The grouped incident this one belongs to: its crews are told once, through the group.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("incidents.id", ondelete="SET NULL"), index=True)
    # Why nobody is told of it: "silence:<id>", "group:<id>"; NULL: notified.
    suppressed_by: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(String(500))
    value: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)   # when the condition began
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)    # when it was raised
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resolved_by: Mapped[str | None] = mapped_column(String(100))  # NULL: cleared by itself
    note: Mapped[str | None] = mapped_column(Text)


Index("ix_incidents_state_opened", Incident.state, Incident.opened_at)


class Silence(Base):
    """No notification for a receiver, a station or a region (one of the three) from ``starts_at``
    to ``ends_at``, for some rules or all: planned maintenance. Incidents are still recorded."""

    __tablename__ = "alert_silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    receiver_id: Mapped[str | None] = mapped_column(ForeignKey("receivers.id", ondelete="CASCADE"))
    station_id: Mapped[int | None] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"))
    kinds: Mapped[list[str] | None] = mapped_column(JSON)  # NULL: every rule
    reason: Mapped[str] = mapped_column(String(500))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Crew(Base):
    """A maintenance crew of a region (NULL: the whole service's), told of the incidents in
    its region that no crew further down takes. Its members take turns on call, a week each
    from ``rotation_start``; ``escalation`` says who is told when an incident stays unacknowledged."""

    __tablename__ = "crews"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    region_id: Mapped[int | None] = mapped_column(ForeignKey("regions.id", ondelete="CASCADE"), index=True)
    rotation_start: Mapped[datetime] = mapped_column(UTCDateTime)
    rotation_days: Mapped[int] = mapped_column(Integer, default=7)
    # [{"after_min": 0, "to": "on_call"}, {"after_min": 15, "to": "next"}, {"after_min": 30, "to": "engineers"}]
    escalation: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # A critical incident nobody acknowledged is told again to whoever is on call this often.
    reminder_min: Mapped[int] = mapped_column(Integer, default=60)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CrewMember(Base):
    __tablename__ = "crew_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    crew_id: Mapped[int] = mapped_column(ForeignKey("crews.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Place in the on-call rotation; engineers are not in it, they are escalated to.
    position: Mapped[int] = mapped_column(Integer, default=0)
    engineer: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where the member is told: apprise URLs (mailto://, tgram://, json:// for a Zalo or SMS
    # gateway, smpp://). They hold credentials: never shown back in full.
    channels: Mapped[list[str]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class NotificationState(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"        # gave up after NOTIFY_GIVE_UP attempts
    CANCELLED = "cancelled"  # acknowledged or resolved before it went out


class Notification(Base):
    """One message to one channel of one person about one incident: planned once (``dedupe_key``
    is unique, so that no restart and no second worker sends it twice), then sent with retries.
    It carries the message's one-tap acknowledge link: a random token kept only as its hash,
    expiring, good once."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    incident_id: Mapped[int] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), index=True)
    # raised, escalated, reminder, resolved
    reason: Mapped[str] = mapped_column(String(16))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    member_id: Mapped[int | None] = mapped_column(ForeignKey("crew_members.id", ondelete="SET NULL"), index=True)
    recipient: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=NotificationState.PENDING.value, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    ack_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
