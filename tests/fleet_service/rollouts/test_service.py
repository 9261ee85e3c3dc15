"""Creating rollouts and acting on them, on SQLite and PostgreSQL: who is targeted and who is
skipped, the waves, the window against the stations' programmes, withdrawal, pause, resume,
abort, retry, and region scope."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from fleet_service.auth.models import Role
from fleet_service.commands.service import Issuer
from fleet_service.db import session_scope, utcnow
from fleet_service.errors import Conflict, Invalid, NotFound
from fleet_service.firmware.models import FirmwareRelease
from fleet_service.firmware.schemas import version_order
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.rollouts import service
from fleet_service.rollouts.models import RolloutState, RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate, TargetIn, WindowIn
from fleet_service.schedules import service as schedules
from fleet_service.schedules.schemas import ScheduleCreate, SlotIn
from fleet_service.scope import RegionScope
from fleet_service.uptime.models import ReceiverLiveState
from tests.support.fleet import provision_fleet

ADMIN = service.Actor(None, "admin", RegionScope())


def add_release(session, version: str = "1.4.0", min_version: str = "1.0.0") -> int:
    release = FirmwareRelease(
        version=version, version_order=version_order(version), hardware="esp32-a7670", min_version=min_version,
        mpy_version="6.3", file_count=0, total_length=0, manifest=b"{}", manifest_sha256="0" * 64,
        signature=b"{}", key_id="0" * 16, uploader_name="engineer", uploaded_at=utcnow())
    session.add(release)
    session.flush()
    return release.id


def report_versions(session, versions: dict[str, str]) -> None:
    now = utcnow()
    for rid, version in versions.items():
        session.add(ReceiverLiveState(receiver_id=rid, online=True, session=1, heard_at=now, updated_at=now,
                                      firmware=version))


def targets(session, rollout_id: int) -> dict[str, RolloutTarget]:
    return {t.receiver_id: t for t in session.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == rollout_id))}


@pytest.fixture
def fleet(session_factory):
    fleet = provision_fleet(session_factory, receivers=12, stations=3)
    with session_scope(session_factory) as session:
        versions = {f"rx-{i}": "1.3.0" for i in range(12)}
        versions.update({"rx-9": "1.4.0", "rx-10": "1.5.0", "rx-11": "0.9.0"})
        report_versions(session, versions)
        release_id = add_release(session)
    return fleet, release_id


def test_receivers_are_planned_in_waves_and_the_ineligible_skipped_with_a_reason(session_factory, fleet):
    small, release_id = fleet
    with session_scope(session_factory) as session:
        rollout = service.create_rollout(session, RolloutCreate(name="1.4.0", release_id=release_id,
                                                                target=TargetIn(region_id=small.region_id),
                                                                waves=["3", "50%", "100%"]), ADMIN)
        rows = targets(session, rollout.id)
        out = service.rollout_out(session, rollout)
    skipped = {rid: t.reason for rid, t in rows.items() if t.state == TargetState.SKIPPED}
    assert skipped == {"rx-9": "already", "rx-10": "downgrade", "rx-11": "below_min_version"}
    waves = Counter(t.wave for t in rows.values() if t.state == TargetState.PENDING)
    assert waves == {0: 3, 1: 5, 2: 1}  # 9 eligible: a canary of 3, half of 9 rounded up, the rest
    canary = [rid for rid, t in rows.items() if t.wave == 0 and t.state == TargetState.PENDING]
    assert len({small.station_of(rid) for rid in canary}) == 3  # one per station
    assert out.state == "running" and out.counts == {"pending": 9, "skipped": 3}
    assert [w.size for w in out.progress] == [3, 5, 1]


def test_a_downgrade_is_offered_only_when_forced_and_the_version_filter_narrows(session_factory, fleet):
    small, release_id = fleet
    with session_scope(session_factory) as session:
        forced = service.create_rollout(session, RolloutCreate(
            name="back", release_id=release_id, target=TargetIn(receiver_ids=["rx-10"]), force=True), ADMIN)
        assert targets(session, forced.id)["rx-10"].state == TargetState.PENDING
        with pytest.raises(Invalid) as refused:
            service.create_rollout(session, RolloutCreate(
                name="back", release_id=release_id, target=TargetIn(receiver_ids=["rx-10"])), ADMIN)
        assert "downgrade: 1" in refused.value.message_en
        narrowed = service.create_rollout(session, RolloutCreate(
            name="from 1.3", release_id=release_id, target=TargetIn(from_version="1.3.0")), ADMIN)
        assert sorted(targets(session, narrowed.id)) == sorted(f"rx-{i}" for i in range(9))
        with pytest.raises(NotFound):
            service.create_rollout(session, RolloutCreate(
                name="x", release_id=release_id, target=TargetIn(receiver_ids=["rx-0", "nobody"])), ADMIN)


def test_a_window_over_a_stations_programme_is_refused(session_factory, fleet):
    small, release_id = fleet
    issuer = Issuer(None, "admin", Role.ADMIN, None)
    with session_scope(session_factory) as session:
        schedules.create_schedule(session, ScheduleCreate(name="Bản tin sáng", station=small.station_ids[1], slots=[
            SlotIn(start="05:30", end="06:30", url="http://radio.example/live.mp3")]), issuer)
    data = RolloutCreate(name="night", release_id=release_id, target=TargetIn(region_id=small.region_id),
                         window=WindowIn(start="23:00", end="06:00"))
    with session_scope(session_factory) as session:
        with pytest.raises(Conflict) as clash:
            service.create_rollout(session, data, ADMIN)
    assert "Đài 1: 05:30–06:30" in clash.value.message_vi and "1 stations" in clash.value.message_en
    with session_scope(session_factory) as session:
        rollout = service.create_rollout(session, data.model_copy(update={"window": WindowIn(start="23:00", end="05:30")}),
                                         ADMIN)
        assert service.rollout_out(session, rollout).window == WindowIn(start="23:00", end="05:30")


def test_withdrawing_the_release_stops_its_rollouts_and_no_new_one_takes_it(session_factory, fleet):
    small, release_id = fleet
    with session_scope(session_factory) as session:
        rollout = service.create_rollout(session, RolloutCreate(name="a", release_id=release_id), ADMIN)
        offered = targets(session, rollout.id)["rx-0"]
        offered.state = TargetState.DOWNLOADING.value
    with session_scope(session_factory) as session:
        assert service.withdraw_release(session, release_id) == [rollout.id]
        session.get(FirmwareRelease, release_id).withdrawn_at = utcnow()
    with session_scope(session_factory) as session:
        out = service.rollout_out(session, service.get_rollout(session, rollout.id, RegionScope()))
        assert out.state == "stopped" and "withdrawn" in out.state_reason
        # Not yet offered: cancelled. Already downloading: left to finish or fail on its own.
        assert out.counts == {"cancelled": 8, "downloading": 1, "skipped": 3}
        with pytest.raises(Conflict):
            service.create_rollout(session, RolloutCreate(name="b", release_id=release_id), ADMIN)


def test_pause_resume_abort_and_retry_follow_the_states(session_factory, fleet):
    small, release_id = fleet
    with session_scope(session_factory) as session:
        rollout_id = service.create_rollout(session, RolloutCreate(name="a", release_id=release_id), ADMIN).id
    with session_scope(session_factory) as session:
        with pytest.raises(Conflict):
            service.resume(session, rollout_id, ADMIN)
        assert service.pause(session, rollout_id, ADMIN).state == RolloutState.PAUSED
        rows = targets(session, rollout_id)
        rows["rx-0"].state, rows["rx-1"].state = TargetState.FAILED.value, TargetState.ROLLED_BACK.value
    with session_scope(session_factory) as session:
        assert service.retry_failed(session, rollout_id, ADMIN) == 2
        resumed = service.resume(session, rollout_id, ADMIN)
        assert resumed.state == RolloutState.RUNNING and resumed.offered_since_paced == 0
    with session_scope(session_factory) as session:
        assert service.abort(session, rollout_id, ADMIN, "sai cấu hình").state == RolloutState.ABORTED
        with pytest.raises(Conflict):
            service.retry_failed(session, rollout_id, ADMIN)
        with pytest.raises(Conflict):
            service.pause(session, rollout_id, ADMIN)
        assert Counter(t.state for t in targets(session, rollout_id).values()) == {"cancelled": 9, "skipped": 3}


def test_a_rollout_reaches_and_shows_only_what_the_caller_may_see(session_factory, fleet):
    small, release_id = fleet
    with session_scope(session_factory) as session:
        elsewhere = registry.create_region(session, RegionCreate(name="Phú Xuyên", level="xã", code="px"))
        outside = service.Actor(None, "operator", RegionScope(elsewhere.path))
        inside = service.Actor(None, "engineer", RegionScope(registry.get_region(session, small.region_id).path))
        with pytest.raises(NotFound):  # another region's subtree, named outright
            service.create_rollout(session, RolloutCreate(name="a", release_id=release_id,
                                                          target=TargetIn(region_id=small.region_id)), outside)
        with pytest.raises(Invalid):  # its whole scope holds no receiver
            service.create_rollout(session, RolloutCreate(name="a", release_id=release_id), outside)
        rollout = service.create_rollout(session, RolloutCreate(name="a", release_id=release_id), inside)
        assert service.get_rollout(session, rollout.id, inside.scope).id == rollout.id
        with pytest.raises(NotFound):
            service.get_rollout(session, rollout.id, outside.scope)


def test_versions_are_read_as_the_firmware_names_itself(session_factory):
    """Births and telemetry say "loa-fw-1.4.0" (firmware/loa/__init__.py)."""
    provision_fleet(session_factory, receivers=3, stations=1)
    with session_scope(session_factory) as session:
        report_versions(session, {"rx-0": "loa-fw-1.4.0", "rx-1": "loa-fw-1.3.0", "rx-2": "loa-fw-1.2.0"})
        release_id = add_release(session)
        rollout = service.create_rollout(session, RolloutCreate(name="a", release_id=release_id,
                                                                target=TargetIn(from_version="loa-fw-1.3.0")), ADMIN)
        assert {rid: (t.state, t.from_version) for rid, t in targets(session, rollout.id).items()} == {
            "rx-1": ("pending", "1.3.0")}
        rollout = service.create_rollout(session, RolloutCreate(name="b", release_id=release_id), ADMIN)
        assert {rid: (t.state, t.reason) for rid, t in targets(session, rollout.id).items()} == {
            "rx-0": ("skipped", "already"), "rx-1": ("pending", None), "rx-2": ("pending", None)}
