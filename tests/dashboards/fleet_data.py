"""One small fleet, written the way the service writes it, for the dashboards' queries:

- the registry, through the registry service (a province, a district, two communes, three
  stations, six receivers, one of them without a station and one never seen);
- a quarter of uptime ledger, by feeding births, Wills, goodbyes, reports and inactivity sweeps
  to the service's ConnectivityTracker and writing its transitions with record_transitions;
- a day of telemetry and events as InfluxDB line protocol, made by the telemetry writer's own
  functions from decoded protocol messages, with station and region tags from its tag cache.

Everything the dashboards should show is computable from ``TelemetryRecord`` and the ledger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope
from fleet_service.protocol.messages import Event, StateMessage, Telemetry
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate
from fleet_service.telemetry.points import AMPLIFIER_CODES, STREAM_CODES, event_line, telemetry_line
from fleet_service.telemetry.repository import TagRepository
from fleet_service.telemetry.tags import build_tags
from fleet_service.uptime.service import record_transitions
from fleet_service.uptime.tracker import ConnectivityTracker

# The first quarter of 2026 in Vietnam's time.
QUARTER_START = datetime(2025, 12, 31, 17, tzinfo=UTC)
QUARTER_END = datetime(2026, 3, 31, 17, tzinfo=UTC)
# A day of telemetry: 10 March 2026, 00:00 to 24:00 in Vietnam's time.
DAY_START = datetime(2026, 3, 9, 17, tzinfo=UTC)
MINUTES = 24 * 60

INVENTORY = {"regions": [{
    "code": "thai-nguyen", "name": "Thái Nguyên", "level": "tỉnh", "children": [{
        "code": "thai-nguyen.dai-tu", "name": "Đại Từ", "level": "huyện", "children": [
            {"code": "thai-nguyen.dai-tu.an-khanh", "name": "An Khánh", "level": "xã",
             "stations": [{"name": "Đài An Khánh"}]},
            {"code": "thai-nguyen.dai-tu.hung-son", "name": "Hùng Sơn", "level": "thị trấn",
             "stations": [{"name": "Đài Hùng Sơn"}, {"name": "Đài Hùng Sơn 2"}]},
        ]}]}]}
# receiver -> station name (None: not assigned)
RECEIVERS = {"rx-s1a": "Đài An Khánh", "rx-s1b": "Đài An Khánh", "rx-s2": "Đài Hùng Sơn",
             "rx-s3": "Đài Hùng Sơn 2", "rx-s3-spare": "Đài Hùng Sơn 2", "rx-lab": None}
REPORTING = ["rx-s1a", "rx-s1b", "rx-s2", "rx-s3", "rx-lab"]


@dataclass
class Registry:
    station_ids: dict[str, int]    # station name -> id
    station_of: dict[str, int | None]
    tags: dict[str, tuple[str, str]]  # receiver -> (station tag, region tag)
    region_paths: dict[str, str]   # region code -> materialised path


def create_registry(sessions: sessionmaker[Session]) -> Registry:
    with session_scope(sessions) as session:
        registry.import_regions(session, INVENTORY)
        stations = {s.name: s.id for s in registry.list_stations(session)}
        for number, (rid, station) in enumerate(RECEIVERS.items()):
            registry.register_receiver(session, ReceiverCreate(
                id=rid, hardware_id=f"hw-{number}", station_id=stations[station] if station else None))
        repository = TagRepository(session)
        tags = build_tags(repository.regions(), repository.receiver_stations())
        paths = {r.code: r.path for r in registry.list_regions(session) if r.code}
    station_of = {rid: stations[name] if name else None for rid, name in RECEIVERS.items()}
    return Registry(stations, station_of, tags, paths)


# --- the ledger -----------------------------------------------------------------------------

def _state(state: str, session: int, reason: str) -> StateMessage:
    payload: dict[str, object] = {"v": 1, "state": state, "session": session, "reason": reason}
    if state == "online":
        payload["fw"] = "1.0.0"
    return StateMessage.model_validate(payload)


Q, END, DAY, HOUR, MINUTE = QUARTER_START, QUARTER_END, timedelta(days=1), timedelta(hours=1), timedelta(minutes=1)
# (time, receiver, what, session): what a live service would have heard.
LEDGER_INPUT = sorted([
    (Q - 10 * DAY, "rx-s1a", "birth", 1),
    (Q + 10 * DAY, "rx-s1a", "will", 1),
    (Q + 10 * DAY + 2 * HOUR, "rx-s1a", "reconnect", 2),
    (Q + 40 * DAY, "rx-s1a", "will", 2),
    (Q + 40 * DAY + 30 * MINUTE, "rx-s1a", "reconnect", 3),
    (Q + 5 * DAY, "rx-s1b", "birth", 1),
    (Q + 50 * DAY, "rx-s1b", "shutdown", 1),
    (Q + 50 * DAY + 6 * HOUR, "rx-s1b", "birth", 2),
    (Q - DAY, "rx-s2", "birth", 1),
    (END - DAY, "rx-s2", "will", 1),           # an outage across the end of the quarter
    (END + 2 * DAY, "rx-s2", "birth", 2),
    (END + 10 * DAY, "rx-s2", "will", 2),      # still down now
    (Q - 30 * DAY, "rx-s3", "birth", 1),
    (Q + 20 * DAY, "rx-s3", "report", 1),
    (Q + 20 * DAY + HOUR, "rx-s3", "sweep", 1),     # silent: offline from the last report
    (Q + 20 * DAY + 3 * HOUR, "rx-s3", "report", 1),  # heard again: resumed
    (Q + DAY, "rx-lab", "birth", 1),
    (Q + 2 * DAY, "rx-lab", "will", 1),
], key=lambda item: item[0])


def write_ledger(sessions: sessionmaker[Session], station_of: dict[str, int | None]) -> None:
    tracker = ConnectivityTracker(inactivity_timeout=timedelta(seconds=200), grace=timedelta(0))
    for at, rid, what, session_number in LEDGER_INPUT:
        if what == "birth":
            transitions = tracker.on_state(rid, _state("online", session_number, "boot"), at, retained=False)
        elif what == "reconnect":
            transitions = tracker.on_state(rid, _state("online", session_number, "reconnect"), at, retained=False)
        elif what == "will":
            transitions = tracker.on_state(rid, _state("offline", session_number, "lost"), at, retained=False)
        elif what == "shutdown":
            transitions = tracker.on_state(rid, _state("offline", session_number, "shutdown"), at, retained=False)
        elif what == "report":
            transitions = tracker.on_activity(rid, session_number, at)
        else:
            # Everyone else reported a minute ago: only the receiver that fell silent is swept.
            for other in RECEIVERS:
                if other != rid and tracker.is_online(other):
                    tracker.on_activity(other, tracker.session_of(other) or 0, at - MINUTE)
            transitions = tracker.sweep(at)
        with session_scope(sessions) as session:
            record_transitions(session, transitions, station_of)


# --- telemetry and events -------------------------------------------------------------------

@dataclass(frozen=True)
class TelemetryRecord:
    at: datetime
    receiver: str
    station: str
    region: str
    fw: str
    fields: dict[str, float]  # InfluxDB field name -> value, as the writer stores it


@dataclass(frozen=True)
class EventRecord:
    at: datetime
    receiver: str
    station: str
    region: str
    kind: str
    detail: str


EVENTS = [  # (minute of the day, receiver, kind, detail)
    (-10, "rx-s2", "low_supply", "vin:10.9"),  # the evening before, in Vietnam's time
    (0, "rx-lab", "boot", ""),
    (100, "rx-s1a", "stream_error", "http:503"),
    (106, "rx-s1a", "stream_recovered", ""),
    (300, "rx-s1b", "amp_fault", ""),
    (310, "rx-s1b", "amp_recovered", ""),
    (600, "rx-s2", "link_lost", "lte"),
    (720, "rx-s2", "boot", ""),
    (900, "rx-s1a", "stream_error", "http:404"),
]


def _telemetry_message(rid: str, number: int, minute: int, received_at: datetime) -> Telemetry:
    delay = 300 if rid == "rx-s3" else 1  # rx-s3's clock is five minutes behind
    payload = {
        "v": 1, "session": 1, "seq": minute, "ts": int(received_at.timestamp()) - delay, "up": 3600 + 60 * minute,
        "rssi": -60 - 5 * number - minute % 7, "csq": 20 - number, "temp": 30.0 + number + (minute % 10) * 0.5,
        "vin": round(12.0 - (minute % 5) * 0.1, 1),
        "amp": "fault" if rid == "rx-s1b" and 300 <= minute < 310 else "on",
        "st": "error" if rid == "rx-s1a" and 100 <= minute < 105 else
              "buffering" if rid == "rx-s1a" and minute == 105 else "playing",
        "kbps": 64 + 32 * (number % 2), "urun": (minute // 30) * (number + 1), "mem": 100_000 - minute,
        "fw": "1.1.0" if rid == "rx-s1b" and minute >= 720 else "1.0.0",
        "sb": 8000 * minute, "vol": 80, "skew": -300_000 if rid == "rx-s3" else 0,
    }
    return Telemetry.model_validate(payload)


def _fields(message: Telemetry, received_at: datetime) -> dict[str, float]:
    values: dict[str, float] = {
        "signal_dbm": message.signal_dbm, "signal_csq": message.signal_csq, "temperature_c": message.temperature_c,
        "supply_v": message.supply_v, "amplifier": AMPLIFIER_CODES[message.amplifier],
        "stream": STREAM_CODES[message.stream], "bitrate_kbps": message.bitrate_kbps, "underruns": message.underruns,
        "stream_bytes": message.stream_bytes, "free_memory": message.free_memory, "uptime_s": message.uptime_s,
        "volume": message.volume, "clock_skew_ms": message.clock_skew_ms,
        "delay_s": received_at.timestamp() - message.sent_at, "seq": message.seq, "session": message.session,
    }
    return {k: v for k, v in values.items() if v is not None}


def telemetry(tags: dict[str, tuple[str, str]]) -> tuple[list[str], list[TelemetryRecord], list[EventRecord]]:
    lines: list[str] = []
    records: list[TelemetryRecord] = []
    for number, rid in enumerate(REPORTING):
        station, region = tags[rid]
        for minute in range(MINUTES):
            if rid == "rx-s2" and 600 <= minute < 720:
                continue  # two hours without a report
            received_at = DAY_START + timedelta(minutes=minute, seconds=5 * number + 2)
            message = _telemetry_message(rid, number, minute, received_at)
            lines.append(telemetry_line(rid, station, region, message, received_at))
            records.append(TelemetryRecord(received_at, rid, station, region, message.firmware,
                                           _fields(message, received_at)))
    events: list[EventRecord] = []
    for minute, rid, kind, detail in EVENTS:
        station, region = tags[rid]
        received_at = DAY_START + timedelta(minutes=minute, seconds=30)
        payload: dict[str, object] = {"v": 1, "session": 1, "ts": int(received_at.timestamp()), "kind": kind}
        if detail:
            payload["detail"] = detail
        lines.append(event_line(rid, station, region, Event.model_validate(payload), received_at))
        events.append(EventRecord(received_at, rid, station, region, kind, detail))
    return lines, records, events


# --- firmware: what runs now, and a rollout -------------------------------------------------

# What each receiver's live state says it runs (rx-s3-spare never reported).
RUNNING = {"rx-s1a": "1.4.0", "rx-s1b": "1.3.0", "rx-s2": "1.4.0", "rx-s3": "1.3.0", "rx-lab": "1.5.0"}
# A rollout of 1.4.0 and where each of its receivers stands; rx-lab is in it but serves no
# station, rx-s3-spare was skipped.
ROLLOUT_TARGETS = {"rx-s1a": "confirmed", "rx-s1b": "rolled_back", "rx-s2": "confirmed", "rx-s3": "downloading",
                   "rx-lab": "failed", "rx-s3-spare": "skipped"}


def write_firmware(sessions: sessionmaker[Session]) -> int:
    """The live state's versions and one rollout; returns the rollout's id."""
    from fleet_service.firmware.models import FirmwareRelease
    from fleet_service.rollouts.models import Rollout, RolloutTarget
    from fleet_service.uptime.models import ReceiverLiveState

    at = DAY_START
    with session_scope(sessions) as session:
        for rid, version in RUNNING.items():
            session.add(ReceiverLiveState(receiver_id=rid, online=True, session=1, heard_at=at, updated_at=at,
                                          firmware=version))
        release = FirmwareRelease(version="1.4.0", version_order=100040000, hardware="esp32-a7670",
                                  min_version="1.0.0", mpy_version="6.3", file_count=0, total_length=0,
                                  manifest=b"{}", manifest_sha256="0" * 64, signature=b"{}", key_id="0" * 16,
                                  uploader_name="kythuat", uploaded_at=at)
        session.add(release)
        session.flush()
        rollout = Rollout(name="Bản 1.4.0", release_id=release.id, state="paused", target_summary="the fleet",
                          waves=["1", "100%"], wave_count=2, current_wave=1, success_percent=90, error_percent=20,
                          min_finished=1, step_timeout_s=1800, per_minute=60, jitter_s=30, force=False,
                          creator_name="kythuat", created_at=at, updated_at=at, offered_since_paced=0)
        session.add(rollout)
        session.flush()
        for rid, state in ROLLOUT_TARGETS.items():
            session.add(RolloutTarget(rollout_id=rollout.id, receiver_id=rid, wave=0 if rid == "rx-s1a" else 1,
                                      state=state, state_at=at, attempts=1))
        return rollout.id


# --- alert incidents ------------------------------------------------------------------------

@dataclass(frozen=True)
class IncidentRecord:
    """One incident as the evaluator and the crews leave it; times as offsets from ``at``."""
    name: str
    kind: str
    severity: str
    receiver: str | None              # None: a grouped incident
    at: datetime                      # opened (raised)
    acknowledged_s: float | None = None
    resolved_s: float | None = None
    resolved_by: str | None = None    # None: cleared by itself
    scope: str = "receiver"
    region: str | None = None         # a region-wide group's commune (region code)
    parent: str | None = None         # the group it belongs to
    silenced: bool = False
    started_before_s: float = 300     # the condition began this long before it was raised


Q_ = QUARTER_START
# Open now: a critical amplifier fault nobody took; Hùng Sơn's three receivers offline together,
# one grouped incident that a crew took; an overheat; a weak signal under a silence; and a fault
# of the receiver that serves no station.
OPEN_INCIDENTS = [
    IncidentRecord("amp-now", "amp_fault", "critical", "rx-s1b", DAY_START + 5 * HOUR),
    IncidentRecord("hung-son-offline", "offline", "major", None, DAY_START + 10 * HOUR, acknowledged_s=600,
                   scope="region", region="thai-nguyen.dai-tu.hung-son"),
    *[IncidentRecord(f"member-{rid}", "offline", "major", rid, DAY_START + 10 * HOUR, acknowledged_s=600,
                     parent="hung-son-offline") for rid in ("rx-s2", "rx-s3", "rx-s3-spare")],
    IncidentRecord("hot-now", "overheat", "major", "rx-s1a", DAY_START + 12 * HOUR),
    IncidentRecord("weak-silenced", "weak_signal", "minor", "rx-s1a", DAY_START + 3 * HOUR, silenced=True),
    IncidentRecord("lab-now", "stream_error", "major", "rx-lab", DAY_START + 4 * HOUR),
]
# Dealt with: offline acknowledged after 1, 2, 5 and 20 minutes (and the group above after 10),
# amplifier faults after 30 s and 90 s and one that cleared before anyone took it; then what
# must not count: one raised before the quarter and resolved inside it counts, one entirely
# before it or after it does not, nor one under a silence, nor one of the receiver without a
# station.
RESOLVED_INCIDENTS = [
    IncidentRecord("off-1", "offline", "major", "rx-s1a", Q_ + 10 * DAY, 60, 600, "an.nguyen"),
    IncidentRecord("off-2", "offline", "major", "rx-s1b", Q_ + 20 * DAY, 120, 1800, "binh.tran"),
    IncidentRecord("off-3", "offline", "major", "rx-s2", Q_ + 30 * DAY, 300, 3600),
    IncidentRecord("off-4", "offline", "major", "rx-s3", Q_ + 40 * DAY, 1200, 14400, "cuong.le"),
    IncidentRecord("off-across-start", "offline", "major", "rx-s3", Q_ - 22 * HOUR, None, 90000),
    IncidentRecord("amp-1", "amp_fault", "critical", "rx-s1b", Q_ + 50 * DAY, 90, 1000, "an.nguyen"),
    IncidentRecord("amp-2", "amp_fault", "critical", "rx-s1b", Q_ + 60 * DAY, 30, 3000, "an.nguyen"),
    IncidentRecord("amp-cleared", "amp_fault", "critical", "rx-s1a", Q_ + 61 * DAY, None, 200),
    IncidentRecord("off-before", "offline", "major", "rx-s1a", Q_ - 30 * DAY, 10, 20, "an.nguyen"),
    IncidentRecord("off-after", "offline", "major", "rx-s1a", QUARTER_END - HOUR, 7200, 10800, "an.nguyen"),
    IncidentRecord("off-silenced", "offline", "major", "rx-s2", Q_ + 70 * DAY, 5, 99999, "an.nguyen", silenced=True),
    IncidentRecord("lab-resolved", "offline", "major", "rx-lab", Q_ + 15 * DAY, 7, 8, "an.nguyen"),
]
# Who was told of the amplifier fault: two channels of one person, another person, and one
# message still waiting (not told yet). The channels hold credentials Grafana must not read.
NOTIFICATIONS = [  # (incident, reason, recipient, channel, state)
    ("amp-now", "raised", "Nguyễn Văn An", "mailto://an:secret-pass@mail.example.vn", "sent"),
    ("amp-now", "raised", "Nguyễn Văn An", "json://sms.example.vn/?token=secret-token", "sent"),
    ("amp-now", "escalated", "Lê Văn Cường", "mailto://cuong:secret-pass@mail.example.vn", "sent"),
    ("amp-now", "escalated", "Trần Thị Bình", "mailto://binh:secret-pass@mail.example.vn", "pending"),
    ("off-1", "raised", "Nguyễn Văn An", "mailto://an:secret-pass@mail.example.vn", "sent"),
]


def region_id(path: str) -> int:
    return int(path.rstrip("/").rsplit("/", 1)[1])


def write_incidents(sessions: sessionmaker[Session], registry_: Registry) -> dict[str, int]:
    """The incidents above, as the evaluator raises them and the crews acknowledge and resolve
    them; returns their ids by name."""
    from fleet_service.alerts.models import Incident, Notification

    region_of_station: dict[int, int] = {}
    with session_scope(sessions) as session:
        for station in registry.list_stations(session):
            region_of_station[station.id] = station.region_id
    path_of = {region_id(p): p for p in registry_.region_paths.values()}
    ids: dict[str, int] = {}
    with session_scope(sessions) as session:
        for record in OPEN_INCIDENTS + RESOLVED_INCIDENTS:
            if record.receiver is not None:
                station_id = registry_.station_of[record.receiver]
                region = region_of_station.get(station_id) if station_id is not None else None
                path = path_of[region] if region is not None else "/"
            else:
                path = registry_.region_paths[record.region or ""]
                station_id, region = None, region_id(path)
            acknowledged, resolved = (None if s is None else record.at + timedelta(seconds=s)
                                      for s in (record.acknowledged_s, record.resolved_s))
            parent = ids.get(record.parent) if record.parent else None
            incident = Incident(
                kind=record.kind, severity=record.severity, scope=record.scope, receiver_id=record.receiver,
                station_id=station_id, region_id=region, region_path=path,
                open_key=None if resolved else f"{record.kind}:{record.scope}:{record.receiver or record.region}",
                state="resolved" if resolved else "acknowledged" if acknowledged else "open",
                parent_id=parent,
                suppressed_by=f"group:{parent}" if parent else "silence:1" if record.silenced else None,
                summary=f"{record.kind} {record.receiver or record.region}",
                # A group records its members and how many receivers its subject has.
                detail=None if record.receiver else {
                    "receivers": sorted(r.receiver or "" for r in OPEN_INCIDENTS if r.parent == record.name), "of": 3},
                started_at=record.at - timedelta(seconds=record.started_before_s), opened_at=record.at,
                acknowledged_at=acknowledged, acknowledged_by="tran.binh" if acknowledged else None,
                resolved_at=resolved, resolved_by=record.resolved_by)
            session.add(incident)
            session.flush()
            ids[record.name] = incident.id
        for n, (name, reason, recipient, channel, state) in enumerate(NOTIFICATIONS):
            at = next(r.at for r in OPEN_INCIDENTS + RESOLVED_INCIDENTS if r.name == name)
            session.add(Notification(incident_id=ids[name], reason=reason, dedupe_key=f"{ids[name]}:{n}",
                                     recipient=recipient, channel=channel, state=state, available_at=at,
                                     created_at=at, sent_at=at if state == "sent" else None))
    return ids
