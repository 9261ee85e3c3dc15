"""Creating rollouts and acting on them (pause, resume, abort, retry the failed). Functions take
a session and never commit (the request does). Driving a running rollout is the leading
worker's (rollouts.driver)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fleet_service.db import utcnow
from fleet_service.errors import Conflict, Forbidden, Invalid, NotFound
from fleet_service.firmware.models import FirmwareRelease
from fleet_service.firmware.schemas import version_order
from fleet_service.registry.models import Receiver, ReceiverStatus, Region, Station
from fleet_service.rollouts.models import Rollout, RolloutState, RolloutTarget, TargetState
from fleet_service.rollouts.plan import Pace, Thresholds, Window, assign_waves, parse_waves
from fleet_service.rollouts.schemas import RolloutCreate, RolloutOut, TargetIn, TargetOut, WaveOut, WindowIn
from fleet_service.schedules import service as schedules
from fleet_service.scope import RegionScope
from fleet_service.uptime.models import ReceiverLiveState

# Stations named in a refusal of a window that clashes with their programme.
CLASHES_SHOWN = 5
# How the firmware names itself in births and telemetry ("fw": "loa-fw-1.4.0").
FIRMWARE_PREFIX = "loa-fw-"


def reported_version(firmware: str | None) -> str | None:
    """The version in what a receiver reports of its firmware ("loa-fw-1.4.0" is 1.4.0)."""
    return firmware.removeprefix(FIRMWARE_PREFIX) if firmware is not None else None


def firmware_names(version: str) -> tuple[str, str]:
    """What a receiver running ``version`` may report as its firmware."""
    return version, FIRMWARE_PREFIX + version


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: int | None
    username: str
    scope: RegionScope


@dataclass(frozen=True, slots=True)
class Candidate:
    receiver_id: str
    station_id: int | None
    region_path: str | None
    version: str | None  # as it last reported
    hardware: str | None  # its hardware family, as its last birth named it (protocol 1.2)


def _release(session: Session, release_id: int) -> FirmwareRelease:
    release = session.get(FirmwareRelease, release_id)
    if release is None:
        raise NotFound(f"Không có bản phát hành {release_id}", f"no release {release_id}")
    if release.withdrawn_at is not None:
        raise Conflict(f"Bản phát hành {release.version} đã bị thu hồi", f"release {release.version} was withdrawn")
    return release


def _candidates(session: Session, target: TargetIn, scope: RegionScope) -> list[Candidate]:
    """The active receivers the target names, inside the caller's scope."""
    query = (select(Receiver.id, Receiver.station_id, Region.path, ReceiverLiveState.firmware,
                    ReceiverLiveState.hardware)
             .select_from(Receiver)
             .outerjoin(Station, Station.id == Receiver.station_id)
             .outerjoin(Region, Region.id == Station.region_id)
             .outerjoin(ReceiverLiveState, ReceiverLiveState.receiver_id == Receiver.id)
             .where(Receiver.status == ReceiverStatus.ACTIVE.value, scope.receivers()))
    if target.region_id is not None:
        path = session.scalar(select(Region.path).where(Region.id == target.region_id, scope.regions()))
        if path is None:
            raise NotFound(f"Không có vùng {target.region_id}", f"no region {target.region_id}")
        query = query.where(RegionScope(path).receivers())
    if target.station_id is not None:
        if session.scalar(select(Station.id).where(Station.id == target.station_id, scope.stations())) is None:
            raise NotFound(f"Không có trạm {target.station_id}", f"no station {target.station_id}")
        query = query.where(Receiver.station_id == target.station_id)
    if target.receiver_ids is not None:
        query = query.where(Receiver.id.in_(sorted(set(target.receiver_ids))))
    found = [Candidate(rid, station, path, reported_version(firmware), hardware)
             for rid, station, path, firmware, hardware in session.execute(query.order_by(Receiver.id))]
    if target.receiver_ids is not None:
        missing = sorted(set(target.receiver_ids) - {c.receiver_id for c in found})
        if missing:
            raise NotFound(f"Không có máy thu: {', '.join(missing[:10])}", f"no such receivers: {', '.join(missing[:10])}")
    if target.from_version is not None:
        wanted = reported_version(target.from_version)
        found = [c for c in found if c.version == wanted]
    return found


def _skip_reason(candidate: Candidate, release: FirmwareRelease, force: bool) -> str | None:
    """Why a receiver is not offered the release, or None. A version it reported that is not
    one of ours (a development build) is offered: the receiver checks min_version itself, and
    its hardware when it has not said which it is."""
    if candidate.hardware is not None and candidate.hardware != release.hardware:
        return "wrong_hardware"
    if candidate.version is None:
        return None
    if candidate.version == release.version:
        return "already"
    try:
        current = version_order(candidate.version)
    except ValueError:
        return None
    if current > release.version_order and not force:
        return "downgrade"
    if current < version_order(release.min_version):
        return "below_min_version"
    return None


def _check_window(session: Session, window: Window, candidates: Sequence[Candidate]) -> None:
    """Refuse a window over any target station's programme: an install there would cut it."""
    reached = [(c.receiver_id, c.station_id, c.region_path) for c in candidates
               if c.station_id is not None and c.region_path is not None]
    slots_by_receiver = schedules.receiver_slots(session, reached)
    station_of = {c.receiver_id: c.station_id for c in candidates}
    clashes: dict[int, list[str]] = {}
    for rid, slots in slots_by_receiver.items():
        station = station_of[rid]
        if station is None or station in clashes:
            continue
        hits = window.clashes(slots)
        if hits:
            clashes[station] = [f"{s.start}–{s.end}" for s in hits]
    if clashes:
        names = {sid: name for sid, name in session.execute(
            select(Station.id, Station.name).where(Station.id.in_(list(clashes))))}
        shown = "; ".join(f"{names.get(sid, sid)}: {', '.join(times)}"
                          for sid, times in sorted(clashes.items())[:CLASHES_SHOWN])
        more = f" (+{len(clashes) - CLASHES_SHOWN})" if len(clashes) > CLASHES_SHOWN else ""
        raise Conflict(f"Khung giờ bảo trì {window} trùng lịch phát của {len(clashes)} trạm: {shown}{more}",
                       f"the maintenance window {window} overlaps the programme of {len(clashes)} stations: "
                       f"{shown}{more}")


def _summary(target: TargetIn) -> str:
    parts = []
    if target.region_id is not None:
        parts.append(f"region {target.region_id}")
    if target.station_id is not None:
        parts.append(f"station {target.station_id}")
    if target.receiver_ids is not None:
        parts.append(f"{len(target.receiver_ids)} receivers")
    if target.from_version is not None:
        parts.append(f"running {target.from_version}")
    return ", ".join(parts) or "the whole scope"


def create_rollout(session: Session, data: RolloutCreate, actor: Actor, *, now: datetime | None = None) -> Rollout:
    now = now or utcnow()
    release = _release(session, data.release_id)
    waves = parse_waves(data.waves)
    thresholds = Thresholds(data.success_percent, data.error_percent, data.min_finished).check()
    Pace(data.per_minute, data.jitter_s).check()
    if data.jitter_s >= data.step_timeout_s:  # a receiver still waiting its jitter would time out
        raise Invalid(f"Quá thời gian mỗi bước ({data.step_timeout_s} giây) phải dài hơn độ trễ ngẫu nhiên "
                      f"({data.jitter_s} giây)", f"the step timeout ({data.step_timeout_s} s) must be longer "
                      f"than the jitter ({data.jitter_s} s)")
    window = Window.parse(data.window.start, data.window.end, data.window.days) if data.window else None
    candidates = _candidates(session, data.target, actor.scope)
    skipped = {c.receiver_id: reason for c in candidates if (reason := _skip_reason(c, release, data.force))}
    eligible = [c for c in candidates if c.receiver_id not in skipped]
    if not eligible:
        reasons = Counter(skipped.values())
        said = ", ".join(f"{reason}: {count}" for reason, count in sorted(reasons.items())) or "none matched"
        raise Invalid(f"Không có máy thu nào để cập nhật ({said})", f"no receiver to update ({said})")
    if window is not None:
        _check_window(session, window, eligible)
    planned = assign_waves([(c.receiver_id, c.station_id) for c in eligible], waves)
    rollout = Rollout(
        name=data.name.strip(), release_id=release.id, state=RolloutState.RUNNING.value,
        target_summary=_summary(data.target)[:500], waves=[str(w) for w in waves], wave_count=len(planned),
        current_wave=0, success_percent=thresholds.success_percent, error_percent=thresholds.error_percent,
        min_finished=thresholds.min_finished, step_timeout_s=data.step_timeout_s, per_minute=data.per_minute,
        jitter_s=data.jitter_s, window_start=window.start.strftime("%H:%M") if window else None,
        window_end=window.end.strftime("%H:%M") if window else None, window_days=window.days if window else None,
        force=data.force, created_by=actor.user_id, creator_name=actor.username, created_at=now, updated_at=now,
        paced_from=now, offered_since_paced=0)
    session.add(rollout)
    session.flush()
    version_of = {c.receiver_id: c.version for c in candidates}
    rows = [RolloutTarget(rollout_id=rollout.id, receiver_id=rid, wave=index, state=TargetState.PENDING.value,
                          from_version=version_of[rid], state_at=now, attempts=0)
            for index, wave in enumerate(planned) for rid in wave]
    rows += [RolloutTarget(rollout_id=rollout.id, receiver_id=rid, wave=0, state=TargetState.SKIPPED.value,
                           reason=reason, from_version=version_of[rid], state_at=now, attempts=0)
             for rid, reason in sorted(skipped.items())]
    session.add_all(rows)
    session.flush()
    return rollout


def get_rollout(session: Session, rollout_id: int, scope: RegionScope) -> Rollout:
    """A rollout the caller may see: one with at least one receiver in their scope."""
    rollout = session.get(Rollout, rollout_id)
    if rollout is None or (scope.path is not None and session.scalar(
            select(RolloutTarget.receiver_id).join(Receiver, Receiver.id == RolloutTarget.receiver_id)
            .where(RolloutTarget.rollout_id == rollout_id, scope.receivers()).limit(1)) is None):
        raise NotFound(f"Không có đợt cập nhật {rollout_id}", f"no rollout {rollout_id}")
    return rollout


def acted_on(session: Session, rollout_id: int, scope: RegionScope) -> Rollout:
    """A rollout the caller may act on: every one of its receivers is in their scope (one that
    reaches further is seen, not steered, by a regional account)."""
    rollout = get_rollout(session, rollout_id, scope)
    if scope.path is not None:
        outside = session.scalar(
            select(func.count()).select_from(RolloutTarget)
            .where(RolloutTarget.rollout_id == rollout_id, RolloutTarget.receiver_id.not_in(scope.receiver_ids())))
        if outside:
            raise Forbidden(f"Đợt cập nhật {rollout_id} có {outside} máy thu ngoài vùng của bạn",
                            f"rollout {rollout_id} has {outside} receivers outside your region")
    return rollout


def _act(session: Session, rollout_id: int, actor: Actor, allowed_from: set[RolloutState], to: RolloutState,
         reason: str | None, verb_vi: str, verb_en: str) -> Rollout:
    rollout = acted_on(session, rollout_id, actor.scope)
    state = RolloutState(rollout.state)
    if state not in allowed_from:
        raise Conflict(f"Không thể {verb_vi} đợt cập nhật đang ở trạng thái {state.value}",
                       f"cannot {verb_en} a rollout that is {state.value}")
    now = utcnow()
    rollout.state = to.value
    rollout.state_reason = reason[:500] if reason else None
    rollout.updated_at = now
    if to is RolloutState.RUNNING:
        rollout.paced_from, rollout.offered_since_paced = now, 0
    if to.final:
        rollout.finished_at = now
        _cancel_unswitched(session, rollout.id, now)
    return rollout


def _cancel_unswitched(session: Session, rollout_id: int, now: datetime) -> None:
    """Receivers not offered yet are cancelled. Those already offered are left as they are:
    the receiver finishes or fails on its own, and reports it."""
    for target in session.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == rollout_id,
                                                              RolloutTarget.state == TargetState.PENDING.value)):
        target.state, target.state_at = TargetState.CANCELLED.value, now


def pause(session: Session, rollout_id: int, actor: Actor, reason: str | None = None) -> Rollout:
    return _act(session, rollout_id, actor, {RolloutState.RUNNING}, RolloutState.PAUSED,
                reason or f"tạm dừng bởi / paused by {actor.username}", "tạm dừng", "pause")


def resume(session: Session, rollout_id: int, actor: Actor) -> Rollout:
    return _act(session, rollout_id, actor, {RolloutState.PAUSED}, RolloutState.RUNNING, None, "tiếp tục", "resume")


def abort(session: Session, rollout_id: int, actor: Actor, reason: str | None = None) -> Rollout:
    return _act(session, rollout_id, actor, {RolloutState.RUNNING, RolloutState.PAUSED}, RolloutState.ABORTED,
                reason or f"huỷ bởi / aborted by {actor.username}", "huỷ", "abort")


def retry_failed(session: Session, rollout_id: int, actor: Actor) -> int:
    """Failed and rolled-back receivers go back to pending, to be offered again; how many."""
    rollout = acted_on(session, rollout_id, actor.scope)
    if RolloutState(rollout.state).final:
        raise Conflict(f"Đợt cập nhật đã kết thúc ({rollout.state})", f"the rollout has ended ({rollout.state})")
    now = utcnow()
    count = 0
    for target in session.scalars(select(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout_id,
            RolloutTarget.state.in_([TargetState.FAILED.value, TargetState.ROLLED_BACK.value]))):
        target.state, target.reason, target.percent, target.state_at = TargetState.PENDING.value, None, None, now
        count += 1
    rollout.updated_at = now
    return count


def withdraw_release(session: Session, release_id: int, now: datetime | None = None) -> list[int]:
    """The release was withdrawn: every rollout using it stops, and its receivers that have
    not been offered it are cancelled. Returns the rollouts stopped."""
    now = now or utcnow()
    stopped = []
    for rollout in session.scalars(select(Rollout).where(
            Rollout.release_id == release_id,
            Rollout.state.in_([RolloutState.RUNNING.value, RolloutState.PAUSED.value]))):
        rollout.state = RolloutState.STOPPED.value
        rollout.state_reason = "bản phát hành bị thu hồi / the release was withdrawn"
        rollout.updated_at = rollout.finished_at = now
        _cancel_unswitched(session, rollout.id, now)
        stopped.append(rollout.id)
    return stopped


def rollout_out(session: Session, rollout: Rollout) -> RolloutOut:
    release = session.get(FirmwareRelease, rollout.release_id)
    assert release is not None  # RESTRICT: a release with rollouts is never deleted
    per_wave: dict[int, Counter[str]] = {}
    for wave, state in session.execute(select(RolloutTarget.wave, RolloutTarget.state)
                                       .where(RolloutTarget.rollout_id == rollout.id)):
        per_wave.setdefault(wave, Counter())[state] += 1
    counts: Counter[str] = Counter()
    for c in per_wave.values():
        counts.update(c)
    window = (WindowIn(start=rollout.window_start, end=rollout.window_end, days=rollout.window_days or 127)
              if rollout.window_start and rollout.window_end else None)
    return RolloutOut(
        id=rollout.id, name=rollout.name, release_id=release.id, version=release.version, hardware=release.hardware,
        state=rollout.state, state_reason=rollout.state_reason, target_summary=rollout.target_summary,
        waves=list(rollout.waves), current_wave=rollout.current_wave, success_percent=rollout.success_percent,
        error_percent=rollout.error_percent, min_finished=rollout.min_finished, step_timeout_s=rollout.step_timeout_s,
        per_minute=rollout.per_minute, jitter_s=rollout.jitter_s, window=window, force=rollout.force,
        creator_name=rollout.creator_name, created_at=rollout.created_at, updated_at=rollout.updated_at,
        finished_at=rollout.finished_at, counts=dict(counts),
        progress=[WaveOut(wave=w, size=sum(c.values()) - c.get(TargetState.SKIPPED.value, 0), counts=dict(c))
                  for w, c in sorted(per_wave.items())])


def target_out(target: RolloutTarget) -> TargetOut:
    return TargetOut(receiver_id=target.receiver_id, wave=target.wave, state=target.state, percent=target.percent,
                     reason=target.reason, from_version=target.from_version, offered_at=target.offered_at,
                     state_at=target.state_at, attempts=target.attempts, command_id=target.command_id,
                     fetched=(target.detail or {}).get("got"))
