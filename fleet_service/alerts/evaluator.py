"""Evaluating the alert rules: the leading worker's workflow (docs/alerts.md).

Every EVAL_INTERVAL_S the rules are evaluated over every active receiver's live state, in a
worker thread, and the timers are kept in ``alert_conditions``:

- a condition that starts holding is recorded with when it began;
- one that holds for the rule's pending time raises an incident, unless the receiver already
  has an unresolved one for that rule (``incidents.open_key`` is unique while unresolved);
- one that stops holding starts its hold-down, and one that holds again within it goes on as
  if it had not stopped (a flapping link is one incident);
- one that has stopped for the whole hold-down is forgotten, and its incident resolved.

Many receivers of one station, or of one commune (a station's region), whose condition began
within GROUP_WINDOW_S of each other and reached the pending time together, become one grouped
incident, of which their own are members: the crew is told once ("12 of 14 receivers in xã
Hùng Sơn lost their connection at 14:02"). An incident under a silence is recorded but not
notified (``suppressed_by``).

Nothing lives only in this process: a restart, or another worker taking the lead, evaluates
the same tables and the same live state and raises nothing twice."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.alerts import counts
from fleet_service.alerts.counts import CountKind
from fleet_service.alerts.models import AlertCondition, Incident, IncidentScope, IncidentState, RuleOverride, Silence
from fleet_service.alerts.rules import DEFAULT_RULES, MB, SOUNDING, TITLES, Context, LiveRow, Rule, RuleKind, evaluate
from fleet_service.db import session_scope, utcnow
from fleet_service.protocol.messages import ScheduleSlot
from fleet_service.registry.models import Receiver, ReceiverStatus, Region, Station
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.schedules.models import Schedule, ScheduleSlotRow
from fleet_service.schedules.service import receiver_slots
from fleet_service.scope import RegionScope
from fleet_service.timefmt import LOCAL_ZONE, local_text
from fleet_service.uptime.models import ConnectivityInterval, ReceiverLiveState

log = logging.getLogger(__name__)

# Pending times are minutes: a turn every few seconds is on time, and costs little between.
EVAL_INTERVAL_S = 10.0  # LOA_ALERT_EVAL_INTERVAL_S
# A whole turn (every receiver) this often; the turns between look only at what may have changed.
# (And at once after a turn found the rules edited.)
FULL_TURN_S = 900.0
# Receivers silent for longer than a silent rule allows are looked for this often (the rule's
# threshold is minutes; the query reads every receiver's live state).
SILENT_CHECK_S = 30.0
# Receiver ids per query.
ID_CHUNK = 500
# Live-state rows are stamped by the writer when it builds the batch, a little before they are
# committed: a turn also looks this far before the previous turn began.
CHANGE_MARGIN_S = 5.0
# Receivers of one group whose condition began this close together failed together.
GROUP_WINDOW_S = 120
# A group is at least this many receivers, and at least this share of the group's receivers.
GROUP_MIN_RECEIVERS = 3
GROUP_MIN_SHARE = 0.5


@dataclass(slots=True)
class Place:
    """Where a receiver is: its station and the station's region (the commune)."""

    station_id: int | None
    station_name: str | None
    region_id: int | None
    region_name: str | None
    region_path: str


@dataclass(slots=True)
class TurnResult:
    raised: list[int] = field(default_factory=list)     # incidents raised, to be notified
    suppressed: list[int] = field(default_factory=list)  # raised, but silenced or in a group
    resolved: list[int] = field(default_factory=list)
    # The rules' overrides as this turn read them (each one's id and last change).
    rules_key: tuple[tuple[int, datetime], ...] = ()


def effective_rules(overrides: Iterable[RuleOverride], region_path: str) -> dict[RuleKind, Rule]:
    """The defaults, then the whole service's overrides, then each region's down the path: the
    nearest region wins, field by field."""
    ids = [int(p) for p in region_path.split("/") if p]
    depth = {0: -1, **{region_id: i for i, region_id in enumerate(ids)}}
    rules = dict(DEFAULT_RULES)
    for override in sorted((o for o in overrides if o.region_key in depth), key=lambda o: depth[o.region_key]):
        try:
            kind = RuleKind(override.kind)
        except ValueError:
            continue
        rules[kind] = rules[kind].with_overrides({
            "severity": override.severity, "pending_s": override.pending_s, "hold_s": override.hold_s,
            "threshold": override.threshold, "enabled": override.enabled, "group_wait_s": override.group_wait_s})
    return rules


def matching_silence(silences: Iterable[Silence], kind: str, receiver_id: str | None, station_id: int | None,
                     region_path: str) -> Silence | None:
    """The silence that covers a rule's incident about a receiver, a station or a region (its
    path), if any: one on the receiver, its station, or any region above."""
    ids = {int(p) for p in region_path.split("/") if p}
    for silence in silences:
        if silence.kinds and kind not in silence.kinds:
            continue
        if ((receiver_id is not None and silence.receiver_id == receiver_id)
                or (station_id is not None and silence.station_id == station_id)
                or (silence.region_id is not None and silence.region_id in ids)):
            return silence
    return None


def _value_text(value: object) -> str | None:
    return None if value is None else str(value)[:64]


def receiver_summary(kind: RuleKind, receiver_id: str, place: Place, since: datetime) -> str:
    vi, en = TITLES[kind]
    where = ", ".join(p for p in (place.station_name, place.region_name) if p)
    return f"{vi} / {en}: {receiver_id}{' (' + where + ')' if where else ''} từ / since {local_text(since)}"


def group_summary(kind: RuleKind, count: int, total: int, where: str, since: datetime) -> str:
    vi, en = TITLES[kind]
    return (f"{vi} / {en}: {count}/{total} máy thu ở / receivers in {where} từ / since {local_text(since)}"
            f" — có thể mất điện hoặc mất sóng 4G cả khu vực / likely a power or 4G cell outage"
            if kind is RuleKind.OFFLINE else
            f"{vi} / {en}: {count}/{total} máy thu ở / receivers in {where} từ / since {local_text(since)}")


class Evaluation:
    """One turn, in one transaction: over the whole fleet (``changed_since`` None), or over the
    receivers whose rules may have changed their mind since ``changed_since``: those with a
    condition being timed, those whose live state changed to one some rule may hold for
    (``suspect_clause``), those silent for longer than any silent rule allows, those playing
    nothing under a slot that began since or whose live state changed under one in force, and
    those whose update failed since. A healthy fleet's reports thus cost a turn a few queries,
    not a row each.
    The leading worker runs a whole turn at its start, after a turn that found the rules edited,
    and every FULL_TURN_S (a receiver moved), the cheap one in between, which looks for silent
    receivers every SILENT_CHECK_S."""

    def __init__(self, session: Session, now: datetime, changed_since: datetime | None = None,
                 look_for_silent: bool = True) -> None:
        self.session = session
        self.now = now
        self.changed_since = changed_since
        self.look_for_silent = look_for_silent
        self.result = TurnResult()
        self.evaluated = 0

    def run(self) -> TurnResult:
        session, now = self.session, self.now
        overrides = list(session.scalars(select(RuleOverride)))
        self.result.rules_key = tuple(sorted((o.id, o.updated_at) for o in overrides))
        silences = list(session.scalars(select(Silence).where(Silence.starts_at <= now, Silence.ends_at > now)))
        conditions = {(c.kind, c.receiver_id): c for c in session.scalars(select(AlertCondition))}
        counted = counted_over(session, now, overrides)
        candidates = self._candidates(conditions, overrides)
        if candidates is not None:
            candidates.update(counted)
        else:
            counts.prune(session, now)
        if candidates is not None and not candidates:
            return self.result  # nothing may have changed its mind (and no condition is being timed)
        rows, places = self._live_rows(candidates)
        self.evaluated = len(rows)
        offline_since: dict[str, datetime] = {}
        failures: dict[str, tuple[str, datetime]] = {}
        for chunk in self._chunks(None if candidates is None else [r.receiver_id for r in rows if not r.online]):
            offline_since.update(self._offline_since(chunk))
        for chunk in self._chunks(None if candidates is None else [r.receiver_id for r in rows]):
            failures.update(self._update_failures(chunk))
        slots = self._slots_in_force(rows, places)
        rules_by_path: dict[str, dict[RuleKind, Rule]] = {}
        firing: list[tuple[AlertCondition, Rule, Place]] = []
        seen: set[tuple[str, str]] = set()
        for row in rows:
            place = places[row.receiver_id]
            rules = rules_by_path.get(place.region_path)
            if rules is None:
                rules = rules_by_path[place.region_path] = effective_rules(overrides, place.region_path)
            rid = row.receiver_id
            tally = counted.get(rid, {})
            findings = evaluate(row, rules, now, Context(
                offline_since.get(rid), slots.get(rid), failures.get(rid), boots=tally.get(CountKind.BOOTS, 0),
                underruns=tally.get(CountKind.UNDERRUNS, 0), month_bytes=tally.get(CountKind.STREAM_BYTES, 0)))
            for kind, rule in rules.items():
                key = (kind.value, row.receiver_id)
                condition = conditions.get(key)
                finding = findings.get(kind)
                if finding is not None:
                    seen.add(key)
                    if condition is None:
                        since = min(finding.since or now, now)
                        condition = AlertCondition(kind=kind.value, receiver_id=row.receiver_id, active_since=since,
                                                   seen_at=now, value=_value_text(finding.value))
                        session.add(condition)
                        conditions[key] = condition
                    else:
                        condition.seen_at, condition.cleared_at = now, None
                        condition.value = _value_text(finding.value)
                    if condition.incident_id is None and now - condition.active_since >= timedelta(seconds=rule.pending_s):
                        firing.append((condition, rule, place))
                elif condition is not None:
                    seen.add(key)
                    self._clearing(condition, rule)
        # Conditions of receivers no longer evaluated (revoked, retired) or rules gone: forgotten.
        # (Every receiver with a condition is a candidate, so an unseen one is one of these.)
        for key, condition in conditions.items():
            if key not in seen:
                self._forget(condition)
        session.flush()
        self._raise(firing, silences)
        return self.result

    def _candidates(self, conditions: dict[tuple[str, str], AlertCondition],
                    overrides: list[RuleOverride]) -> set[str] | None:
        """The receivers to evaluate this turn; None: all of them."""
        since = self.changed_since
        if since is None:
            return None
        session, now = self.session, self.now
        ids = {rid for _, rid in conditions}
        # Of the receivers whose live state changed, only those a rule could hold for: a
        # receiver with a condition being timed is a candidate anyway (above), so one that
        # reports healthy readings and has none has nothing to start or clear.
        ids.update(session.scalars(select(ReceiverLiveState.receiver_id).where(
            ReceiverLiveState.updated_at >= since, suspect_clause(overrides))))
        if self.look_for_silent:
            silent_after = loosest(overrides, RuleKind.SILENT, min)
            ids.update(session.scalars(select(ReceiverLiveState.receiver_id).where(
                ReceiverLiveState.online.is_(True),
                func.coalesce(ReceiverLiveState.telemetry_at, ReceiverLiveState.heard_at)
                < now - timedelta(seconds=silent_after))))
        ids.update(session.scalars(select(RolloutTarget.receiver_id).where(RolloutTarget.state_at >= since)))
        ids.update(self._under_slots_in_force())
        return ids

    def _under_slots_in_force(self) -> set[str]:
        """The active receivers, online and playing nothing (the only ones NO_SOUND can hold
        for), of every station and region a slot in force now belongs to: those whose live state
        changed since the previous turn, and all of them for a slot that began since. (One
        that was silent under its slot at the previous turn has a condition being timed.)"""
        assert self.changed_since is not None
        local, before = self.now.astimezone(LOCAL_ZONE), self.changed_since.astimezone(LOCAL_ZONE)
        in_force = self._slot_targets(local)
        if not in_force:
            return set()
        began = self._slot_targets(local, after=before) if before.date() == local.date() else in_force
        found = self._silent_under(in_force, self.changed_since)
        if began:
            found |= self._silent_under(began, None)
        return found

    def _slot_targets(self, local: datetime, after: datetime | None = None) -> set[tuple[str, int]]:
        """The (kind, id) of every station and region with a slot in force at ``local`` (that
        began after ``after``). Candidates only: slot_in_force decides, in _slots_in_force.
        Slot times are "HH:MM" or "HH:MM:SS" within one day, so text order is time order."""
        slot, clock, today = ScheduleSlotRow, local.strftime("%H:%M:%S"), local.date()
        query = (select(Schedule.target_kind, Schedule.target_id).distinct().join(slot)
                 .where(slot.start <= clock, slot.end > clock, slot.days.op("&")(1 << today.weekday()) != 0,
                        or_(slot.valid_from.is_(None), slot.valid_from <= today),
                        or_(slot.valid_to.is_(None), slot.valid_to >= today)))
        if after is not None:
            query = query.where(slot.start > after.strftime("%H:%M:%S"))
        return {(kind, target_id) for kind, target_id in self.session.execute(query)}

    def _silent_under(self, targets: set[tuple[str, int]], changed_since: datetime | None) -> set[str]:
        """The active receivers of ``targets`` that are online and play nothing (whose live
        state changed since ``changed_since``)."""
        live = ReceiverLiveState
        sound = func.coalesce(live.playing["stream"].as_string(), live.stream)
        quiet = (live.online.is_(True), or_(sound.is_(None), sound.not_in(SOUNDING)))
        silent = select(live.receiver_id).where(*quiet)
        ids: list[str] | None = None
        if changed_since is not None:  # few: those first, rather than every receiver of the targets
            # The time first: SQLite tests the terms in this order, the JSON one for few rows.
            ids = list(self.session.scalars(select(live.receiver_id).where(live.updated_at >= changed_since, *quiet)))
            if not ids:
                return set()
        stations = [t for k, t in targets if k == "station"]
        clauses: list[ColumnElement[bool]] = [Receiver.station_id.in_(stations)] if stations else []
        for region_id in (t for k, t in targets if k == "region"):
            path = self.session.scalar(select(Region.path).where(Region.id == region_id))
            if path is not None:
                clauses.append(RegionScope(path).receivers())
        if not clauses:
            return set()
        found: set[str] = set()
        for chunk in self._chunks(ids):
            query = select(Receiver.id).where(Receiver.status == ReceiverStatus.ACTIVE.value, or_(*clauses))
            query = query.where(Receiver.id.in_(silent)) if chunk is None else query.where(Receiver.id.in_(chunk))
            found.update(self.session.scalars(query))
        return found

    def _live_rows(self, only: set[str] | None) -> tuple[list[LiveRow], dict[str, Place]]:
        rows: list[LiveRow] = []
        places: dict[str, Place] = {}
        if only is not None and not only:
            return rows, places
        for chunk in self._chunks(None if only is None else sorted(only)):
            self._read_rows(chunk, rows, places)
        return rows, places

    def _read_rows(self, chunk: list[str] | None, rows: list[LiveRow], places: dict[str, Place]) -> None:
        query = (
            select(ReceiverLiveState.receiver_id, ReceiverLiveState.online, ReceiverLiveState.heard_at,
                   ReceiverLiveState.telemetry_at, ReceiverLiveState.temperature_c, ReceiverLiveState.supply_v,
                   ReceiverLiveState.signal_dbm, ReceiverLiveState.amplifier, ReceiverLiveState.stream,
                   ReceiverLiveState.clock_skew_s, ReceiverLiveState.playing,
                   Station.id, Station.name, Region.id, Region.name, Region.path)
            .join(Receiver, Receiver.id == ReceiverLiveState.receiver_id)
            .outerjoin(Station, Station.id == Receiver.station_id)
            .outerjoin(Region, Region.id == Station.region_id)
            .where(Receiver.status == ReceiverStatus.ACTIVE.value))
        if chunk is not None:
            query = query.where(ReceiverLiveState.receiver_id.in_(chunk))
        for (rid, online, heard, tele, temp, supply, signal, amp, stream, skew, playing,
             station_id, station_name, region_id, region_name, path) in self.session.execute(query):
            rows.append(LiveRow(rid, online, heard, tele, temp, supply, signal, amp, stream, skew,
                                playing.get("stream") if isinstance(playing, dict) else None))
            places[rid] = Place(station_id, station_name, region_id, region_name, path or "/")

    @staticmethod
    def _chunks(ids: list[str] | None) -> list[list[str] | None]:
        """None (everyone) as one query; ids a chunk at a time; nothing, no query."""
        if ids is None:
            return [None]
        return [ids[i:i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]

    def _offline_since(self, only: list[str] | None) -> dict[str, datetime]:
        query = (select(ConnectivityInterval.receiver_id, ConnectivityInterval.start_at)
                 .where(ConnectivityInterval.end_at.is_(None), ConnectivityInterval.state == "offline"))
        if only is not None:
            query = query.where(ConnectivityInterval.receiver_id.in_(only))
        return {rid: start for rid, start in self.session.execute(query)}

    def _update_failures(self, only: list[str] | None) -> dict[str, tuple[str, datetime]]:
        """Receivers whose latest rollout target failed or rolled back: (reason, when)."""
        latest_query = select(RolloutTarget.receiver_id, func.max(RolloutTarget.rollout_id).label("rollout_id"))
        if only is not None:
            latest_query = latest_query.where(RolloutTarget.receiver_id.in_(only))
        latest = latest_query.group_by(RolloutTarget.receiver_id).subquery()
        rows = self.session.execute(
            select(RolloutTarget.receiver_id, RolloutTarget.state, RolloutTarget.reason, RolloutTarget.state_at)
            .join(latest, (latest.c.receiver_id == RolloutTarget.receiver_id)
                  & (latest.c.rollout_id == RolloutTarget.rollout_id))
            .where(RolloutTarget.state.in_([TargetState.FAILED.value, TargetState.ROLLED_BACK.value])))
        return {rid: (f"{state}: {reason}" if reason else state, at) for rid, state, reason, at in rows}

    def _slots_in_force(self, rows: list[LiveRow], places: dict[str, Place]) -> dict[str, tuple[str, datetime]]:
        """The scheduled slot in force now for each receiver that is online and silent (the only
        ones a slot can raise anything for), and when this occurrence of it began."""
        silent: list[tuple[str, int, str]] = []
        for r in rows:
            station_id = places[r.receiver_id].station_id
            if r.online and station_id is not None and (r.playing_stream or r.stream) not in ("playing", "buffering"):
                silent.append((r.receiver_id, station_id, places[r.receiver_id].region_path))
        if not silent:
            return {}
        found: dict[str, tuple[str, datetime]] = {}
        for rid, slots in receiver_slots(self.session, silent).items():
            in_force = slot_in_force(slots, self.now)
            if in_force is not None:
                found[rid] = in_force
        return found

    def _clearing(self, condition: AlertCondition, rule: Rule) -> None:
        if condition.cleared_at is None:
            condition.cleared_at = self.now
        # Held down before it was raised too: a link that drops for a minute every few minutes
        # adds up to one incident once its first drop is the pending time old.
        if self.now - condition.cleared_at >= timedelta(seconds=rule.hold_s):
            self._forget(condition)

    def _forget(self, condition: AlertCondition) -> None:
        if condition.incident_id is not None:
            self._resolve(condition.incident_id)
        self.session.delete(condition)

    def _resolve(self, incident_id: int) -> None:
        incident = self.session.get(Incident, incident_id)
        if incident is None or incident.state == IncidentState.RESOLVED.value:
            return
        incident.state, incident.resolved_at, incident.open_key = IncidentState.RESOLVED.value, self.now, None
        self.result.resolved.append(incident.id)
        parent_id = incident.parent_id
        if parent_id is not None:
            self.session.flush()
            members_open = self.session.scalar(select(Incident.id).where(
                Incident.parent_id == parent_id, Incident.state != IncidentState.RESOLVED.value).limit(1))
            if members_open is None:
                self._resolve(parent_id)

    def _raise(self, firing: list[tuple[AlertCondition, Rule, Place]], silences: list[Silence]) -> None:
        if not firing:
            return
        totals = self._totals()
        groups = self._groups(firing, totals)
        grouped: dict[tuple[str, str], Incident] = {}
        for (kind, scope, subject_id), members in groups.items():
            parent = self._group_incident(kind, scope, subject_id, members, silences, totals)
            if parent is not None:
                for condition, _, _ in members:
                    grouped[(condition.kind, condition.receiver_id)] = parent
        for condition, rule, place in firing:
            parent = grouped.get((condition.kind, condition.receiver_id))
            if parent is None and self.now - condition.active_since < timedelta(seconds=rule.pending_s + rule.group_wait_s):
                continue  # alone so far: its neighbours may still join it into a group (Alertmanager's group_wait)
            kind = RuleKind(condition.kind)
            silence = matching_silence(silences, kind.value, condition.receiver_id, place.station_id, place.region_path)
            suppressed_by = f"group:{parent.id}" if parent is not None else (f"silence:{silence.id}" if silence else None)
            incident = self._open(Incident(
                kind=kind.value, severity=rule.severity.value, scope=IncidentScope.RECEIVER.value,
                receiver_id=condition.receiver_id, station_id=place.station_id, region_id=place.region_id,
                region_path=place.region_path, open_key=f"{kind.value}:rx:{condition.receiver_id}",
                parent_id=parent.id if parent is not None else None, suppressed_by=suppressed_by,
                summary=receiver_summary(kind, condition.receiver_id, place, condition.active_since)[:500],
                value=condition.value, started_at=condition.active_since, opened_at=self.now))
            if incident is not None:
                condition.incident_id = incident.id

    def _totals(self) -> dict[tuple[str, int], int]:
        """Active receivers with a live state per station and per commune (a station's region)."""
        totals: dict[tuple[str, int], int] = {}
        for station_id, region_id, count in self.session.execute(
                select(Station.id, Station.region_id, func.count(Receiver.id))
                .join(Receiver, Receiver.station_id == Station.id)
                .join(ReceiverLiveState, ReceiverLiveState.receiver_id == Receiver.id)
                .where(Receiver.status == ReceiverStatus.ACTIVE.value).group_by(Station.id, Station.region_id)):
            totals[(IncidentScope.STATION.value, station_id)] = count
            key = (IncidentScope.REGION.value, region_id)
            totals[key] = totals.get(key, 0) + count
        return totals

    def _groups(self, firing: list[tuple[AlertCondition, Rule, Place]],
                totals: dict[tuple[str, int], int]) -> dict[tuple[RuleKind, str, int], list[tuple[AlertCondition, Rule, Place]]]:
        """Firing conditions that fail together: by commune first, else by station. A group
        already raised takes every receiver of its commune (station) whose condition began
        within GROUP_WINDOW_S of it, however few fire in this turn."""
        groups: dict[tuple[RuleKind, str, int], list[tuple[AlertCondition, Rule, Place]]] = {}
        taken: set[tuple[str, str]] = set()
        for scope in (IncidentScope.REGION.value, IncidentScope.STATION.value):
            by_subject: dict[tuple[RuleKind, int], list[tuple[AlertCondition, Rule, Place]]] = defaultdict(list)
            for item in firing:
                subject = item[2].region_id if scope == IncidentScope.REGION.value else item[2].station_id
                if subject is not None and (item[0].kind, item[0].receiver_id) not in taken:
                    by_subject[(RuleKind(item[0].kind), subject)].append(item)
            for (kind, subject), items in by_subject.items():
                open_group = self.session.scalar(select(Incident).where(
                    Incident.open_key == f"{kind.value}:{scope}:{subject}"))
                if open_group is not None:
                    together = [i for i in items if abs((i[0].active_since - open_group.started_at).total_seconds())
                                <= GROUP_WINDOW_S]
                    if not together:
                        continue
                else:
                    together = _together(items)
                    if not _enough(len(together), totals.get((scope, subject), 0)):
                        continue
                groups[(kind, scope, subject)] = together
                taken.update((c.kind, c.receiver_id) for c, _, _ in together)
        return groups

    def _group_incident(self, kind: RuleKind, scope: str, subject_id: int,
                        members: list[tuple[AlertCondition, Rule, Place]], silences: list[Silence],
                        totals: dict[tuple[str, int], int]) -> Incident | None:
        place = members[0][2]
        total = totals.get((scope, subject_id), len(members))
        since = min(c.active_since for c, _, _ in members)
        where = (place.region_name if scope == IncidentScope.REGION.value else place.station_name) or str(subject_id)
        severity = min((rule.severity for _, rule, _ in members), key=lambda s: list(type(s)).index(s))
        open_key = f"{kind.value}:{scope}:{subject_id}"
        existing = self.session.scalar(select(Incident).where(Incident.open_key == open_key))
        if existing is not None:  # late members join the group already raised, which counts them
            receivers = sorted({*(existing.detail or {}).get("receivers", []), *(c.receiver_id for c, _, _ in members)})
            existing.detail = {"receivers": receivers, "of": total}
            existing.summary = group_summary(kind, len(receivers), total, where, existing.started_at)[:500]
            return existing
        silence = matching_silence(silences, kind.value, None,
                                   place.station_id if scope == IncidentScope.STATION.value else None, place.region_path)
        return self._open(Incident(
            kind=kind.value, severity=severity.value, scope=scope,
            station_id=place.station_id if scope == IncidentScope.STATION.value else None,
            region_id=place.region_id, region_path=place.region_path, open_key=open_key,
            suppressed_by=f"silence:{silence.id}" if silence else None,
            summary=group_summary(kind, len(members), total, where, since)[:500],
            detail={"receivers": sorted(c.receiver_id for c, _, _ in members), "of": total},
            started_at=since, opened_at=self.now))

    def _open(self, incident: Incident) -> Incident | None:
        """Insert, unless the subject already has an unresolved incident for the rule."""
        try:
            with self.session.begin_nested():
                self.session.add(incident)
                self.session.flush()
        except IntegrityError:
            return self.session.scalar(select(Incident).where(Incident.open_key == incident.open_key))
        (self.result.suppressed if incident.suppressed_by else self.result.raised).append(incident.id)
        return incident


def suspect_clause(overrides: Iterable[RuleOverride]) -> ColumnElement[bool]:
    """Live-state rows that some rule's condition (alerts.rules.CONDITIONS) may hold for, in
    SQL: every threshold at its loosest among the defaults and every region's overrides, so
    that the rows it leaves out are ones no rule holds for anywhere. The rules over time
    (SILENT), slots (NO_SOUND) and rollouts (UPDATE_FAILED) find their candidates otherwise."""
    live = ReceiverLiveState
    return or_(
        live.online.is_(False),
        live.amplifier == "fault",
        live.stream == "error",
        live.playing["stream"].as_string() == "error",
        live.temperature_c > loosest(overrides, RuleKind.OVERHEAT, min),
        live.supply_v < loosest(overrides, RuleKind.LOW_SUPPLY, max),
        live.signal_dbm < loosest(overrides, RuleKind.WEAK_SIGNAL, max),
        func.abs(live.clock_skew_s) > loosest(overrides, RuleKind.CLOCK_UNSYNCED, min),
    )


def loosest(overrides: Iterable[RuleOverride], kind: RuleKind, pick: Callable[[list[float]], float]) -> float:
    """A rule's threshold at its loosest (``pick``: min or max) among the default and every
    region's overrides."""
    values = [o.threshold for o in overrides if o.kind == kind.value and o.threshold is not None]
    default = DEFAULT_RULES[kind].threshold
    return pick(values + ([default] if default is not None else []))


def counted_over(session: Session, now: datetime, overrides: list[RuleOverride]) -> dict[str, dict[CountKind, int]]:
    """The receivers whose counts (alerts.counts) some region's rule over events may hold for."""
    return counts.over(session, now, {
        CountKind.BOOTS: loosest(overrides, RuleKind.REBOOTS, min),
        CountKind.UNDERRUNS: loosest(overrides, RuleKind.UNDERRUNS, min),
        CountKind.STREAM_BYTES: loosest(overrides, RuleKind.DATA_BUDGET, min) * MB,
    })


def slot_in_force(slots: Iterable[ScheduleSlot], now: datetime) -> tuple[str, datetime] | None:
    """The slot in force at ``now`` by the stations' clock (Asia/Ho_Chi_Minh), and when this
    occurrence of it began (UTC)."""
    local = now.astimezone(LOCAL_ZONE)
    day = local.date()
    second = local.hour * 3600 + local.minute * 60 + local.second
    for slot in slots:
        start, end = slot.seconds()
        if not (start <= second < end) or not slot.days & (1 << day.weekday()):
            continue
        if (slot.valid_from is not None and day < slot.valid_from) or (slot.valid_to is not None and day > slot.valid_to):
            continue
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        return slot.slot_id, (midnight + timedelta(seconds=start)).astimezone(now.tzinfo)
    return None


def _together(items: list[tuple[AlertCondition, Rule, Place]]) -> list[tuple[AlertCondition, Rule, Place]]:
    """The items whose condition began within GROUP_WINDOW_S of the earliest."""
    first = min(c.active_since for c, _, _ in items)
    return [item for item in items if item[0].active_since - first <= timedelta(seconds=GROUP_WINDOW_S)]


def _enough(count: int, total: int) -> bool:
    return count >= GROUP_MIN_RECEIVERS and total > 0 and count / total >= GROUP_MIN_SHARE


def evaluate_once(sessions: sessionmaker[Session], now: datetime | None = None,
                  changed_since: datetime | None = None, look_for_silent: bool = True) -> TurnResult:
    with session_scope(sessions) as session:
        return Evaluation(session, now or utcnow(), changed_since, look_for_silent).run()


class AlertEvaluator:
    """Runs the evaluation every EVAL_INTERVAL_S in the leading worker. ``on_raised`` hears of
    the incidents raised (the ids, after their commit): notifications follow from there."""

    def __init__(self, sessions: sessionmaker[Session], *,
                 on_raised: Callable[[TurnResult], None] | None = None, interval_s: float = EVAL_INTERVAL_S) -> None:
        self._sessions = sessions
        self._on_raised = on_raised
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.turns = 0
        self.failures = 0
        self.raised = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-evaluator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_full: float | None = None
        last_silent = 0.0
        rules_key: tuple[tuple[int, datetime], ...] | None = None
        changed_since: datetime | None = None
        while True:
            started, clock = utcnow(), loop.time()
            full = last_full is None or clock - last_full >= FULL_TURN_S
            look_for_silent = full or clock - last_silent >= SILENT_CHECK_S
            try:
                # A turn looks at what changed since the previous one began, with a margin for
                # live-state rows written while that turn was reading.
                result = await asyncio.to_thread(evaluate_once, self._sessions, started,
                                                 None if full else changed_since, look_for_silent)
            except Exception:  # the database is down: the next turn evaluates again
                self.failures += 1
                log.exception("alert evaluation failed; evaluated again at the next turn")
                last_full = None  # and whole, since what changed meanwhile is not known
            else:
                self.turns += 1
                self.raised += len(result.raised)
                if full:
                    last_full = clock
                if look_for_silent:
                    last_silent = clock
                if rules_key is not None and result.rules_key != rules_key:
                    last_full = None  # a rule was edited: the next turn applies it to everyone
                rules_key = result.rules_key
                changed_since = started - timedelta(seconds=CHANGE_MARGIN_S)
                if self._on_raised is not None and (result.raised or result.resolved):
                    self._on_raised(result)
            await asyncio.sleep(self._interval_s)
