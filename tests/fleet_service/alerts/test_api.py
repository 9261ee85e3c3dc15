"""The alerts API: incidents read, acknowledged and resolved by the crews of their region,
silences for planned work, and a region's rules set, shown with their source and reset."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select

from fleet_service.alerts.evaluator import evaluate_once
from fleet_service.alerts.models import Incident
from fleet_service.auth.models import Role
from fleet_service.db import utcnow
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.uptime.models import ReceiverLiveState
from tests.fleet_service.auth.world import World, ok, running_api
from tests.support.fleet import SmallFleet, provision_fleet

API = "/api/v1"


@dataclass
class Setup:
    world: World
    fleet: SmallFleet
    admin: dict[str, str]
    crew: dict[str, str]        # an operator of the commune
    engineer: dict[str, str]    # a technician of the commune
    outsider: dict[str, str]    # a technician of another province
    viewer: dict[str, str]

    def get(self, path: str, headers: dict[str, str], **params):  # type: ignore[no-untyped-def]
        return self.world.client.get(f"{API}{path}", headers=headers, params=params)

    def post(self, path: str, headers: dict[str, str], body: dict | None = None):  # type: ignore[no-untyped-def]
        return self.world.client.post(f"{API}{path}", headers=headers, json=body or {})


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    with running_api(db_url) as world:
        fleet = provision_fleet(world.runtime.sessions, receivers=4, stations=2)
        with world.session() as session:
            other = registry.create_region(session, RegionCreate(name="Bắc Kạn", level="tỉnh")).id
            now = utcnow()
            for rid in fleet.credentials:  # rx-0 lost, rx-1's amplifier failing, the rest well
                session.add(ReceiverLiveState(receiver_id=rid, online=rid != "rx-0", heard_at=now - timedelta(hours=1),
                                              telemetry_at=now, updated_at=now,
                                              amplifier="fault" if rid == "rx-1" else "on", stream="playing"))
        yield Setup(world, fleet, world.user("admin", Role.ADMIN), world.user("doi.ky.thuat", Role.OPERATOR, fleet.region_id),
                    world.user("kythuat", Role.TECHNICIAN, fleet.region_id),
                    world.user("bac.kan", Role.TECHNICIAN, other), world.user("xem", Role.VIEWER, fleet.region_id))


def raise_incidents(setup: Setup) -> dict[str, dict]:
    evaluate_once(setup.world.runtime.sessions)
    evaluate_once(setup.world.runtime.sessions, utcnow() + timedelta(minutes=6))
    return {i["kind"]: i for i in ok(setup.get("/incidents", setup.admin))}


def test_the_crew_acknowledges_and_resolves_only_what_is_in_its_region(setup: Setup) -> None:
    found = raise_incidents(setup)
    assert set(found) == {"offline", "amp_fault"}
    offline, amp = found["offline"], found["amp_fault"]
    assert (amp["severity"], amp["receiver_id"], amp["state"]) == ("critical", "rx-1", "open")
    assert ok(setup.get("/incidents", setup.outsider)) == []
    assert setup.post(f"/incidents/{amp['id']}/acknowledge", setup.outsider).status_code == 404
    assert setup.post(f"/incidents/{amp['id']}/acknowledge", setup.viewer).status_code == 403
    acked = ok(setup.post(f"/incidents/{amp['id']}/acknowledge", setup.crew, {"note": "đang tới / on the way"}))
    assert (acked["state"], acked["acknowledged_by"], acked["note"]) == ("acknowledged", "doi.ky.thuat", "đang tới / on the way")
    assert [i["id"] for i in ok(setup.get("/incidents", setup.crew, state="open"))] == [offline["id"]]
    done = ok(setup.post(f"/incidents/{amp['id']}/resolve", setup.crew, {"note": "thay cầu chì / fuse replaced"}))
    assert (done["state"], done["resolved_by"]) == ("resolved", "doi.ky.thuat")
    again = setup.post(f"/incidents/{amp['id']}/resolve", setup.crew)
    assert again.status_code == 409 and "resolved already" in again.json()["error"]["message_en"]
    # Resolved by hand while the fault still holds: nothing new until it has cleared.
    evaluate_once(setup.world.runtime.sessions, utcnow() + timedelta(minutes=20))
    assert len(ok(setup.get("/incidents", setup.admin, kind="amp_fault"))) == 1
    audit = ok(setup.get("/audit", setup.admin))
    assert any(e["action"] == "acknowledge" and e["actor"] == "doi.ky.thuat" and "incident_id" in (e["target"] or "") for e in audit)


def test_a_silence_is_for_technicians_of_the_subjects_region_and_ends_by_hand(setup: Setup) -> None:
    until = (utcnow() + timedelta(hours=2)).isoformat()
    body = {"station_id": setup.fleet.station_of("rx-0"), "reason": "thay cột loa / new pole", "ends_at": until}
    assert setup.post("/silences", setup.crew, body).status_code == 403
    assert setup.post("/silences", setup.outsider, body).status_code == 404
    both = setup.post("/silences", setup.engineer, {**body, "receiver_id": "rx-0"})
    assert both.status_code == 422 and "exactly one of" in both.text
    silence = ok(setup.post("/silences", setup.engineer, body), 201)
    assert ok(setup.get("/silences", setup.crew)) == [silence]
    found = raise_incidents(setup)
    assert found["offline"]["suppressed_by"] == f"silence:{silence['id']}"
    assert found["amp_fault"]["suppressed_by"] is None  # rx-1 is on the other station
    ended = ok(setup.world.client.delete(f"{API}/silences/{silence['id']}", headers=setup.engineer))
    assert ok(setup.get("/silences", setup.crew)) == []
    assert ok(setup.get("/silences", setup.crew, ended=True)) == [ended]


def test_a_region_sets_its_rules_and_takes_them_from_above_again(setup: Setup) -> None:
    region = setup.fleet.region_id
    rules = {r["kind"]: r for r in ok(setup.get("/alert-rules", setup.crew, region_id=region))}
    assert rules["overheat"] == {"kind": "overheat", "severity": "major", "pending_s": 300, "hold_s": 300,
                                 "threshold": 70.0, "enabled": True, "group_wait_s": 0,
                                 "source": dict.fromkeys(("severity", "pending_s", "hold_s", "threshold", "enabled",
                                                          "group_wait_s"), "default")}
    assert rules["offline"]["group_wait_s"] == 90
    put = lambda who, body, **params: setup.world.client.put(  # noqa: E731
        f"{API}/alert-rules/overheat", headers=who, json=body, params=params)
    assert put(setup.engineer, {"threshold": 80}).status_code == 403  # service-wide: whole-fleet admins
    assert put(setup.outsider, {"threshold": 80}, region_id=region).status_code == 404
    assert put(setup.engineer, {"threshold": 80, "nonsense": 1}, region_id=region).status_code == 422
    rule = ok(put(setup.engineer, {"threshold": 80, "severity": "critical"}, region_id=region))
    assert (rule["threshold"], rule["severity"], rule["pending_s"]) == (80.0, "critical", 300)
    assert rule["source"]["threshold"] == str(region) and rule["source"]["pending_s"] == "default"
    ok(put(setup.admin, {"pending_s": 60}))  # service-wide, beneath the region's own
    rule = next(r for r in ok(setup.get("/alert-rules", setup.crew, region_id=region)) if r["kind"] == "overheat")
    assert (rule["pending_s"], rule["source"]["pending_s"], rule["threshold"]) == (60, "0", 80.0)
    offline = setup.world.client.put(f"{API}/alert-rules/offline", headers=setup.engineer, json={"threshold": 5},
                                     params={"region_id": region})
    assert offline.status_code == 409 and "has no threshold" in offline.text
    reset = ok(setup.world.client.delete(f"{API}/alert-rules/overheat", headers=setup.engineer,
                                         params={"region_id": region}))
    assert (reset["threshold"], reset["severity"], reset["pending_s"]) == (70.0, "major", 60)


def test_a_grouped_incident_is_acknowledged_with_its_members(setup: Setup) -> None:
    with setup.world.session() as session:
        for row in session.scalars(select(ReceiverLiveState)):
            row.online = False  # the commune's power is out
    evaluate_once(setup.world.runtime.sessions)
    evaluate_once(setup.world.runtime.sessions, utcnow() + timedelta(minutes=6))
    listed = ok(setup.get("/incidents", setup.crew, kind="offline"))
    group, = listed
    assert group["scope"] == "region" and group["detail"]["of"] == 4
    assert len(ok(setup.get("/incidents", setup.crew, kind="offline", members=True))) == 5
    members = ok(setup.get("/incidents", setup.crew, parent_id=group["id"]))
    assert sorted(m["receiver_id"] for m in members) == ["rx-0", "rx-1", "rx-2", "rx-3"]
    assert len(ok(setup.get("/incidents", setup.crew, region_id=setup.fleet.region_id, kind="offline"))) == 1
    assert setup.get("/incidents", setup.outsider, region_id=setup.fleet.region_id).status_code == 404
    ok(setup.post(f"/incidents/{group['id']}/acknowledge", setup.crew))
    with setup.world.session() as session:
        states = {i.scope: i.state for i in session.scalars(select(Incident).where(Incident.kind == "offline"))}
    assert states == {"region": "acknowledged", "receiver": "acknowledged"}
