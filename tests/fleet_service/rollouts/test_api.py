"""Rollouts through the real API, on SQLite and PostgreSQL: create, list, show, the receivers by
state and wave, pause, resume, abort, retry; engineers and admins act, operators only read;
regions see the rollouts that reach them and steer only those wholly theirs; every action is in
the audit log; refusals are bilingual."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from fleet_service.audit.models import AuditEntry
from fleet_service.auth.models import Role
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.rollouts.models import RolloutTarget
from tests.fleet_service.auth.world import World, ok, running_api
from tests.fleet_service.rollouts.test_service import add_release

API = "/api/v1/rollouts"


@dataclass
class Setup:
    world: World
    release_id: int
    ids: dict[str, int]
    admin: dict[str, str]
    engineer_x: dict[str, str]      # technician of commune X
    engineer_district: dict[str, str]
    operator_x: dict[str, str]
    operator_y: dict[str, str]

    def post(self, path: str, headers: dict[str, str], **kwargs):  # type: ignore[no-untyped-def]
        return self.world.client.post(f"{API}{path}", headers=headers, **kwargs)

    def get(self, path: str, headers: dict[str, str], **params):  # type: ignore[no-untyped-def]
        return self.world.client.get(f"{API}{path}", headers=headers, params=params)


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    with running_api(db_url) as world:
        ids: dict[str, int] = {}
        with world.session() as s:
            district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
            for name in ("x", "y"):
                commune = registry.create_region(s, RegionCreate(name=f"Xã {name}", level="xã", parent_id=district.id))
                station = registry.create_station(s, StationCreate(region_id=commune.id, name=f"Đài {name}"))
                ids[name], ids[f"s{name}"] = commune.id, station.id
                for n in range(4):
                    registry.register_receiver(s, ReceiverCreate(id=f"{name}-{n}", hardware_id=f"hw-{name}-{n}",
                                                                 station_id=station.id))
            ids["district"] = district.id
            release_id = add_release(s)
        yield Setup(world, release_id, ids, world.user("admin", Role.ADMIN),
                    world.user("kythuat.x", Role.TECHNICIAN, ids["x"]),
                    world.user("kythuat.huyen", Role.TECHNICIAN, ids["district"]),
                    world.user("vanhanh.x", Role.OPERATOR, ids["x"]), world.user("vanhanh.y", Role.OPERATOR, ids["y"]))


def test_create_show_list_and_follow_the_receivers(setup: Setup) -> None:
    body = {"name": "1.4.0 xã X", "release_id": setup.release_id, "waves": ["1", "100%"],
            "window": {"start": "22:00", "end": "04:00"}, "per_minute": 10}
    refused = setup.post("", setup.operator_x, json=body)
    assert refused.status_code == 403 and refused.json()["error"]["message_en"].startswith("The role 'operator'")
    created = ok(setup.post("", setup.engineer_x, json=body), 201)  # the caller's whole scope: commune X
    assert (created["state"], created["counts"], [w["size"] for w in created["progress"]]) == (
        "running", {"pending": 4}, [1, 3])
    assert created["window"] == {"start": "22:00", "end": "04:00", "days": 127} and created["creator_name"] == "kythuat.x"
    rid = created["id"]
    assert ok(setup.get(f"/{rid}", setup.operator_x)) == created  # operators read
    assert ok(setup.get("", setup.operator_x)) == [created]
    assert ok(setup.get("", setup.operator_y)) == []
    assert setup.get(f"/{rid}", setup.operator_y).status_code == 404
    assert setup.get(f"/{rid}/targets", setup.operator_y).status_code == 404
    targets = ok(setup.get(f"/{rid}/targets", setup.operator_x))
    assert [(t["receiver_id"], t["wave"], t["state"]) for t in targets] == [
        ("x-0", 0, "pending"), ("x-1", 1, "pending"), ("x-2", 1, "pending"), ("x-3", 1, "pending")]
    assert [t["receiver_id"] for t in ok(setup.get(f"/{rid}/targets", setup.admin, wave=1, limit=2, offset=1))] == \
        ["x-2", "x-3"]
    assert ok(setup.get(f"/{rid}/targets", setup.admin, state="confirmed")) == []
    assert setup.get(f"/{rid}/targets", setup.admin, state="nonsense").status_code == 422
    assert [r["id"] for r in ok(setup.get("", setup.admin, state=["paused", "completed"]))] == []
    with setup.world.session() as s:
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "create_rollout").order_by(AuditEntry.id)).all()
        assert [(a.actor, a.outcome) for a in audit] == [("vanhanh.x", "refused"), ("kythuat.x", "ok")]
        assert audit[1].target == f"rollout_id={rid}, release_id={setup.release_id}, version=1.4.0, hardware=esp32-a7670"


def test_pause_resume_retry_abort(setup: Setup) -> None:
    rid = ok(setup.post("", setup.engineer_x, json={"name": "a", "release_id": setup.release_id}), 201)["id"]
    assert setup.post(f"/{rid}/pause", setup.operator_x).status_code == 403
    conflict = setup.post(f"/{rid}/resume", setup.engineer_x)
    assert conflict.status_code == 409
    assert conflict.json()["error"]["message"].startswith("Không thể tiếp tục")
    assert "cannot resume a rollout that is running" in conflict.json()["error"]["message_en"]
    paused = ok(setup.post(f"/{rid}/pause", setup.engineer_x, json={"reason": "chờ kiểm tra loa"}))
    assert (paused["state"], paused["state_reason"]) == ("paused", "chờ kiểm tra loa")
    with setup.world.session() as s:
        s.get(RolloutTarget, (rid, "x-0")).state = "failed"
    retried = ok(setup.post(f"/{rid}/retry", setup.engineer_x))
    assert retried["retried"] == 1 and retried["rollout"]["counts"] == {"pending": 4}
    assert ok(setup.post(f"/{rid}/resume", setup.engineer_x))["state"] == "running"
    aborted = ok(setup.post(f"/{rid}/abort", setup.admin))
    assert (aborted["state"], aborted["counts"]) == ("aborted", {"cancelled": 4})
    assert "admin" in aborted["state_reason"] and aborted["finished_at"] is not None
    assert setup.post(f"/{rid}/retry", setup.engineer_x).status_code == 409
    with setup.world.session() as s:
        actions = [(a.action, a.target) for a in s.scalars(select(AuditEntry).where(
            AuditEntry.outcome == "ok", AuditEntry.action != "create_rollout").order_by(AuditEntry.id))]
    assert actions == [(f"{verb}_rollout", f"rollout_id={rid}") for verb in ("pause", "retry", "resume", "abort")]


def test_a_region_sees_what_reaches_it_and_steers_only_what_is_wholly_its_own(setup: Setup) -> None:
    whole = ok(setup.post("", setup.engineer_district, json={"name": "huyện", "release_id": setup.release_id}), 201)
    assert whole["counts"] == {"pending": 8}
    assert ok(setup.get(f"/{whole['id']}", setup.engineer_x))["id"] == whole["id"]
    assert {t["receiver_id"] for t in ok(setup.get(f"/{whole['id']}/targets", setup.engineer_x))} == {
        f"x-{n}" for n in range(4)}
    refused = setup.post(f"/{whole['id']}/pause", setup.engineer_x)
    assert refused.status_code == 403 and "4 receivers outside your region" in refused.json()["error"]["message_en"]
    assert ok(setup.post(f"/{whole['id']}/pause", setup.engineer_district))["state"] == "paused"
    # Naming another region's station: as absent.
    other = setup.post("", setup.engineer_x, json={"name": "y", "release_id": setup.release_id,
                                                   "target": {"station_id": setup.ids["sy"]}})
    assert other.status_code == 404
    bad = setup.post("", setup.engineer_x, json={"name": "y", "release_id": setup.release_id, "waves": ["0"]})
    assert bad.status_code == 422 and bad.json()["error"]["message_en"].startswith("wave '0'")
    slow = setup.post("", setup.engineer_x, json={"name": "y", "release_id": setup.release_id, "jitter_s": 600,
                                                  "step_timeout_s": 600})
    assert slow.status_code == 422 and "longer than the jitter" in slow.json()["error"]["message_en"]
    assert setup.get("/999999", setup.admin).status_code == 404
