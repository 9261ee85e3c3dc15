"""For every GET endpoint of the API, what a scoped user reads is exactly what the whole-fleet
admin reads, filtered by that user's region scope; outside it, single objects answer 404.

The filter here is written independently of fleet_service.scope: a region is in a scope when
the scope's region id is one of the ids on the region's path (ancestor or self), which no
string prefix can confuse. The fleet holds the prefix trap: regions "/1/2/" and "/1/23/".

A GET route the test does not know fails the first test: a new endpoint must say here how its
answer is scoped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest

from fleet_service.alerts.models import Incident
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.db import utcnow
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.uptime.models import ConnectivityInterval
from tests.fleet_service.auth.world import World, ok, running_api
from tests.fleet_service.rollouts.test_service import add_release

API = "/api/v1"
URL = "http://127.0.0.1:9/live.mp3"
# A fixed period: availability computed at two instants would differ by the time between them.
PERIOD = {"start": "2026-01-01T00:00:00+07:00", "end": "2026-01-02T00:00:00+07:00"}


@dataclass
class ScopeFleet:
    world: World
    admin: dict[str, str]
    region_ids: dict[str, int]
    # Per scope region name: (operator headers, regional admin headers).
    scoped: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)
    _truth: Truth | None = None

    def truth(self) -> Truth:
        """The admin's reading of the fleet, read once: the tests only read, and about a hundred
        of them share this fleet."""
        if self._truth is None:
            self._truth = Truth(self)
        return self._truth


@pytest.fixture(scope="module")
def scope_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScopeFleet]:
    """Two provinces; in the first, district "2" and its sibling "23" (the prefix trap), each
    with communes below; a station and a receiver in each; one receiver on no station;
    commands and schedules to every kind of target; operators and admins of five regions."""
    from fleet_service.migrations import upgrade
    from tests.support.postgres import postgres_available, scratch_database

    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('scope') / 'loa.db'}"
        upgrade(url)
        with running_api(url) as world:
            yield _build(world)
    else:
        if not postgres_available():
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; the test command starts it")
        with scratch_database() as url:
            upgrade(url)
            with running_api(url) as world:
                yield _build(world)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scope_fleet" in metafunc.fixturenames:
        metafunc.parametrize("scope_fleet", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                             indirect=True, scope="module")


def _build(world: World) -> ScopeFleet:
    ids: dict[str, int] = {}
    with world.session() as s:
        def region(name: str, parent: str | None) -> None:
            made = registry.create_region(s, RegionCreate(name=name, level="xã", parent_id=ids[parent] if parent else None))
            ids[name] = made.id

        region("P1", None)                 # 1   /1/
        region("D2", "P1")                 # 2   /1/2/
        region("C3", "D2")                 # 3   /1/2/3/
        region("V4", "C3")                 # 4   /1/2/3/4/
        region("P5", None)                 # 5   /5/
        for n in range(6, 23):             # 6..22 under P5: they bring the next id to 23
            region(f"F{n}", "P5")
        region("D23", "P1")                # 23  /1/23/
        region("C24", "D23")               # 24  /1/23/24/
        paths = {name: registry.get_region(s, rid).path for name, rid in ids.items()}
        assert (paths["D2"], paths["D23"], paths["C24"]) == ("/1/2/", "/1/23/", "/1/23/24/"), paths
        for name in ("P1", "D2", "C3", "V4", "P5", "D23", "C24"):
            station = registry.create_station(s, StationCreate(region_id=ids[name], name=f"Đài {name}"))
            ids[f"s{name}"] = station.id
            registry.register_receiver(s, ReceiverCreate(id=f"r-{name}", hardware_id=f"hw-{name}", station_id=station.id))
        registry.register_receiver(s, ReceiverCreate(id="r-free", hardware_id="hw-free"))  # on no station
        registry.revoke(s, "r-V4")  # not in the live view, still in the registry's lists
        now = utcnow()
        for name in ("D2", "D23", "C24", "P5"):
            s.add(ConnectivityInterval(receiver_id=f"r-{name}", station_id=ids[f"s{name}"], state="online",
                                       start_at=now - timedelta(days=400), end_at=None, start_cause="birth", session=1))
        auth.create_user(s, "admin", role=Role.ADMIN)
        _, admin_token = auth.issue_token(s, auth.get_user(s, "admin").id, "t")
    fleet = ScopeFleet(world, {"Authorization": f"Bearer {admin_token}"}, ids)
    for name in ("P1", "D2", "D23", "C3", "P5"):
        fleet.scoped[name] = (world.user(f"op.{name.lower()}", Role.OPERATOR, ids[name]),
                              world.user(f"admin.{name.lower()}", Role.ADMIN, ids[name]))
    client = world.client
    targets: list[dict[str, Any]] = [{"receiver": "r-C3"}, {"receiver": "r-D23"}, {"receiver": "r-free"},
                                     {"station": ids["sC24"]}, {"station": ids["sD2"]}, {"region": ids["D2"]},
                                     {"region": ids["P1"]}, {"region": ids["D23"]}, {"region": ids["P5"]},
                                     {"fleet": True}]
    for target in targets:
        ok(client.post(f"{API}/commands", json={"target": target, "op": "play", "url": URL}, headers=fleet.admin), 202)
    for n, target in enumerate(({"station": ids["sC3"]}, {"region": ids["D2"]}, {"region": ids["D23"]},
                                {"region": ids["P5"]}, {"station": ids["sP1"]})):
        slot = {"start": f"{5 + n:02d}:00", "end": f"{5 + n:02d}:30", "url": URL}
        ok(client.post(f"{API}/schedules", json={"name": f"Lịch {n}", **target, "slots": [slot]}, headers=fleet.admin), 201)
    with world.session() as s:
        release_id = add_release(s)
    for n, target in enumerate(({"region_id": ids["D2"]}, {"region_id": ids["D23"]}, {"station_id": ids["sC24"]},
                                {"receiver_ids": ["r-C3", "r-D23"]}, {"region_id": ids["P5"]}, {})):
        ok(client.post(f"{API}/rollouts", json={"name": f"Cập nhật {n}", "release_id": release_id, "target": target},
                       headers=fleet.admin), 201)
    with world.session() as s:  # incidents as the leading worker raises them
        for name in ("D2", "C3", "D23", "C24", "P5"):
            s.add(Incident(kind="offline", severity="major", scope="receiver", receiver_id=f"r-{name}",
                           station_id=ids[f"s{name}"], region_id=ids[name], region_path=paths[name],
                           open_key=f"offline:rx:r-{name}", summary=f"r-{name}", started_at=now, opened_at=now))
        s.add(Incident(kind="offline", severity="major", scope="region", region_id=ids["C3"], region_path=paths["C3"],
                       open_key=f"offline:region:{ids['C3']}", summary="C3", started_at=now, opened_at=now))
    until = (now + timedelta(days=1)).isoformat()
    for region in (None, "D2", "C3", "D23"):  # the service's own crew, and three regions'
        ok(client.post(f"{API}/crews", json={"name": f"Đội {region}", "region_id": ids[region] if region else None},
                       headers=fleet.admin), 201)
    for subject in ({"receiver_id": "r-C3"}, {"station_id": ids["sD23"]}, {"region_id": ids["D2"]},
                    {"region_id": ids["P5"]}):
        ok(client.post(f"{API}/silences", json={**subject, "reason": "bảo trì", "ends_at": until},
                       headers=fleet.admin), 201)
    return fleet


# --- what the admin's answers say about the fleet -------------------------------------------

class Truth:
    """The fleet as the whole-fleet admin reads it, and the independent scope filter."""

    def __init__(self, fleet: ScopeFleet) -> None:
        get = lambda path: ok(fleet.world.client.get(f"{API}{path}", headers=fleet.admin))  # noqa: E731
        self.regions = {r["id"]: r for r in get("/regions")}
        self.stations = {s["id"]: s for s in get("/stations")}
        self.receivers = {r["id"]: r for r in get("/receivers")}
        self.commands = get("/commands?limit=1000")
        self.targets = {c["id"]: get(f"/commands/{c['id']}/targets") for c in self.commands}

    def ids_on_path(self, region_id: int) -> set[int]:
        return {int(p) for p in self.regions[region_id]["path"].strip("/").split("/")}

    def region_in(self, scope: int, region_id: int | None) -> bool:
        return region_id is not None and region_id in self.regions and scope in self.ids_on_path(region_id)

    def station_in(self, scope: int, station_id: int | None) -> bool:
        return station_id is not None and self.region_in(scope, self.stations[station_id]["region_id"])

    def receiver_in(self, scope: int, receiver_id: str) -> bool:
        return self.station_in(scope, self.receivers[receiver_id]["station_id"])

    def command_visible(self, scope: int, command: dict[str, Any]) -> bool:
        kind, ref = command["target_kind"], command["target_ref"]
        scope_path_ids = self.ids_on_path(scope)
        by_target = {"fleet": lambda: True,
                     "region": lambda: self.region_in(scope, int(ref)) or int(ref) in scope_path_ids,
                     "station": lambda: self.station_in(scope, int(ref)),
                     "receiver": lambda: self.receiver_in(scope, ref)}[kind]()
        return by_target or any(self.receiver_in(scope, t["receiver_id"]) for t in self.targets[command["id"]])

    def scoped_command(self, scope: int, command: dict[str, Any]) -> dict[str, Any]:
        """The admin's row with the counts of the scope's receivers only."""
        progress: dict[str, int] = {}
        for t in self.targets[command["id"]]:
            if self.receiver_in(scope, t["receiver_id"]):
                progress[t["status"]] = progress.get(t["status"], 0) + 1
        return {**command, "progress": progress, "targets": sum(progress.values())}


# --- how each GET endpoint is scoped ----------------------------------------------------------

Check = Callable[[ScopeFleet, Truth, int, dict[str, str], dict[str, str]], None]


def _get(fleet: ScopeFleet, path: str, headers: dict[str, str], **params: Any):  # type: ignore[no-untyped-def]
    return fleet.world.client.get(f"{API}{path}", headers=headers, params=params)


def _same_or_absent(fleet: ScopeFleet, path: str, visible: bool, headers: dict[str, str], **params: Any) -> None:
    """One object (or one object's list): the admin's answer when in scope, 404 otherwise."""
    scoped = _get(fleet, path, headers, **params)
    if visible:
        assert ok(scoped) == ok(_get(fleet, path, fleet.admin, **params)), path
    else:
        assert scoped.status_code == 404, (path, scoped.status_code, scoped.text)


def check_regions(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    expected = [r for r in ok(_get(fleet, "/regions", fleet.admin)) if truth.region_in(scope, r["id"])]
    assert ok(_get(fleet, "/regions", op)) == expected
    for rid in truth.regions:
        _same_or_absent(fleet, f"/regions/{rid}", truth.region_in(scope, rid), op)


def check_stations(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    expected = [s for s in ok(_get(fleet, "/stations", fleet.admin)) if truth.station_in(scope, s["id"])]
    assert ok(_get(fleet, "/stations", op)) == expected


def check_receivers(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    expected = [r for r in ok(_get(fleet, "/receivers", fleet.admin)) if truth.receiver_in(scope, r["id"])]
    assert ok(_get(fleet, "/receivers", op)) == expected


def check_commands(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    expected = [truth.scoped_command(scope, c) for c in truth.commands if truth.command_visible(scope, c)]
    assert ok(_get(fleet, "/commands", op, limit=1000)) == expected
    for c in truth.commands:
        visible = truth.command_visible(scope, c)
        one = _get(fleet, f"/commands/{c['id']}", op)
        targets = _get(fleet, f"/commands/{c['id']}/targets", op)
        if visible:
            assert ok(one) == truth.scoped_command(scope, c)
            assert ok(targets) == [t for t in truth.targets[c["id"]] if truth.receiver_in(scope, t["receiver_id"])]
        else:
            assert (one.status_code, targets.status_code) == (404, 404), (c, one.text)


def check_schedules(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    def visible(s: dict[str, Any]) -> bool:
        kind, target = s["target_kind"], s["target_id"]
        return truth.station_in(scope, target) if kind == "station" else truth.region_in(scope, target)

    admin_list = ok(_get(fleet, "/schedules", fleet.admin))
    assert ok(_get(fleet, "/schedules", op)) == [s for s in admin_list if visible(s)]
    for s in admin_list:
        _same_or_absent(fleet, f"/schedules/{s['id']}", visible(s), op)


def check_users(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], admin: dict[str, str]) -> None:
    # Users are read by admins only; a regional admin, those of its subtree.
    assert _get(fleet, "/users", op).status_code == 403
    expected = [u for u in ok(_get(fleet, "/users", fleet.admin)) if truth.region_in(scope, u["region_id"])]
    assert ok(_get(fleet, "/users", admin)) == expected


def check_audit(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], admin: dict[str, str]) -> None:
    # The log belongs to no region: filtered by any subtree it is refused, to operators and
    # the subtree's admins alike (it would tell of the rest of the fleet).
    assert ok(_get(fleet, "/audit", fleet.admin))
    assert (_get(fleet, "/audit", op).status_code, _get(fleet, "/audit", admin).status_code) == (403, 403)


def check_live(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    whole = ok(_get(fleet, "/live/receivers", fleet.admin))
    rows = [r for r in whole["receivers"] if truth.receiver_in(scope, r["receiver_id"])]
    counts = {k: sum(r["state"] == k for r in rows) for k in ("online", "offline", "never_seen")}
    assert ok(_get(fleet, "/live/receivers", op)) == {**whole, "receivers": rows, **counts}


def check_per_receiver(path: str) -> Check:
    def check(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
        for rid in truth.receivers:
            _same_or_absent(fleet, path.format(rid), truth.receiver_in(scope, rid), op, **PERIOD)
    return check


def check_per_station(path: str) -> Check:
    def check(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
        for sid in truth.stations:
            _same_or_absent(fleet, path.format(sid), truth.station_in(scope, sid), op, **PERIOD)
    return check


def check_region_availability(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str],
                              _admin: dict[str, str]) -> None:
    for rid in truth.regions:
        _same_or_absent(fleet, f"/regions/{rid}/availability", truth.region_in(scope, rid), op, **PERIOD)


def check_rollouts(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    # Seen where any of its receivers is; the receivers listed are the scope's.
    admin_list = ok(_get(fleet, "/rollouts", fleet.admin))
    targets = {r["id"]: ok(_get(fleet, f"/rollouts/{r['id']}/targets", fleet.admin)) for r in admin_list}

    def visible(rollout: dict[str, Any]) -> bool:
        return any(truth.receiver_in(scope, t["receiver_id"]) for t in targets[rollout["id"]])

    assert ok(_get(fleet, "/rollouts", op)) == [r for r in admin_list if visible(r)]
    for r in admin_list:
        one, mine = _get(fleet, f"/rollouts/{r['id']}", op), _get(fleet, f"/rollouts/{r['id']}/targets", op)
        if visible(r):
            assert ok(one) == r
            assert ok(mine) == [t for t in targets[r["id"]] if truth.receiver_in(scope, t["receiver_id"])]
        else:
            assert (one.status_code, mine.status_code) == (404, 404), (r, one.text)


def check_incidents(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    def visible(incident: dict[str, Any]) -> bool:
        if incident["receiver_id"] is not None:
            return truth.receiver_in(scope, incident["receiver_id"])
        return truth.region_in(scope, incident["region_id"])

    admin_list = ok(_get(fleet, "/incidents", fleet.admin, members=True))
    assert len(admin_list) == 6
    assert ok(_get(fleet, "/incidents", op, members=True)) == [i for i in admin_list if visible(i)]
    for i in admin_list:
        _same_or_absent(fleet, f"/incidents/{i['id']}", visible(i), op)
        _same_or_absent(fleet, f"/incidents/{i['id']}/notifications", visible(i), op)


def check_crews(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    def visible(crew: dict[str, Any]) -> bool:
        return crew["region_id"] is not None and truth.region_in(scope, crew["region_id"])

    admin_list = ok(_get(fleet, "/crews", fleet.admin))
    assert len(admin_list) == 4
    assert ok(_get(fleet, "/crews", op)) == [c for c in admin_list if visible(c)]
    for c in admin_list:
        _same_or_absent(fleet, f"/crews/{c['id']}", visible(c), op)


def check_silences(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    def visible(silence: dict[str, Any]) -> bool:
        if silence["receiver_id"] is not None:
            return truth.receiver_in(scope, silence["receiver_id"])
        if silence["station_id"] is not None:
            return truth.station_in(scope, silence["station_id"])
        return truth.region_in(scope, silence["region_id"])

    admin_list = ok(_get(fleet, "/silences", fleet.admin))
    assert len(admin_list) == 4
    assert ok(_get(fleet, "/silences", op)) == [s for s in admin_list if visible(s)]


def check_alert_rules(fleet: ScopeFleet, truth: Truth, scope: int, op: dict[str, str], _admin: dict[str, str]) -> None:
    assert ok(_get(fleet, "/alert-rules", op)) == ok(_get(fleet, "/alert-rules", fleet.admin))  # service-wide
    for rid in truth.regions:
        _same_or_absent(fleet, "/alert-rules", truth.region_in(scope, rid), op, region_id=rid)


def checked_elsewhere(*_: Any) -> None:
    """Part of another check of this table (the list and the single object together)."""


def not_region_data(*_: Any) -> None:
    """The caller's own account, or the service's health: nothing of any region."""


# Every GET route of the API, and how its answer is scoped.
SCOPED_READS: dict[str, Check] = {
    "/auth/me": not_region_data,
    "/auth/tokens": not_region_data,                        # the caller's own tokens
    "/ingest/status": not_region_data,
    "/telemetry/status": not_region_data,
    "/users": check_users,
    "/regions": check_regions,
    "/regions/{region_id}": checked_elsewhere,              # in check_regions
    "/regions/{region_id}/availability": check_region_availability,
    "/stations": check_stations,
    "/stations/{station_id}": check_per_station("/stations/{}"),
    "/stations/{station_id}/history": check_per_station("/stations/{}/history"),
    "/stations/{station_id}/availability": check_per_station("/stations/{}/availability"),
    "/receivers": check_receivers,
    "/receivers/{receiver_id}": check_per_receiver("/receivers/{}"),
    "/receivers/{receiver_id}/availability": check_per_receiver("/receivers/{}/availability"),
    "/receivers/{receiver_id}/connectivity": check_per_receiver("/receivers/{}/connectivity"),
    "/receivers/{receiver_id}/schedule": check_per_receiver("/receivers/{}/schedule"),
    "/live/receivers": check_live,
    "/commands": check_commands,
    "/commands/{command_id}": checked_elsewhere,            # in check_commands
    "/commands/{command_id}/targets": checked_elsewhere,    # in check_commands
    "/schedules": check_schedules,
    "/schedules/{schedule_id}": checked_elsewhere,          # in check_schedules
    "/audit": check_audit,
    # Releases are the fleet's, for every engineer (tests/fleet_service/firmware/test_api.py).
    "/firmware/releases": not_region_data,
    "/firmware/releases/{version}": not_region_data,
    # Receivers only, each its own offers (tests/fleet_service/downloads/test_endpoints.py).
    "/firmware/download/{release_id}/{path}": not_region_data,
    "/rollouts": check_rollouts,
    "/rollouts/{rollout_id}": checked_elsewhere,            # in check_rollouts
    "/rollouts/{rollout_id}/targets": checked_elsewhere,    # in check_rollouts
    "/incidents": check_incidents,
    "/incidents/{incident_id}": checked_elsewhere,          # in check_incidents
    "/incidents/{incident_id}/notifications": checked_elsewhere,  # in check_incidents
    "/crews": check_crews,
    "/crews/{crew_id}": checked_elsewhere,                  # in check_crews
    # The link is the credential: one incident, for the person it was sent to
    # (tests/fleet_service/alerts/test_notify.py).
    "/ack/{token}": not_region_data,
    "/silences": check_silences,
    "/alert-rules": check_alert_rules,
}


def _get_routes(world: World) -> set[str]:
    spec = world.client.app.openapi()  # type: ignore[attr-defined]
    return {path.removeprefix(API) for path, operations in spec["paths"].items() if "get" in operations}


def test_every_get_route_is_known(scope_fleet: ScopeFleet) -> None:
    routes = _get_routes(scope_fleet.world)
    assert routes - set(SCOPED_READS) == set(), "a new GET route: say in SCOPED_READS how its answer is scoped"
    assert set(SCOPED_READS) - routes == set(), "a GET route is gone: take it out of SCOPED_READS"


@pytest.mark.parametrize("route", sorted(SCOPED_READS))
@pytest.mark.parametrize("scope_name", ["D2", "D23", "C3", "P1", "P5"])
def test_a_scoped_read_is_the_whole_read_filtered_by_scope(scope_fleet: ScopeFleet, route: str, scope_name: str) -> None:
    operator, regional_admin = scope_fleet.scoped[scope_name]
    SCOPED_READS[route](scope_fleet, scope_fleet.truth(), scope_fleet.region_ids[scope_name], operator, regional_admin)


def test_the_filter_leaves_something_out_and_something_in(scope_fleet: ScopeFleet) -> None:
    """The comparisons above are not vacuous: the prefix trap's district sees its own and not
    its sibling's, and the whole fleet holds more than any scope."""
    fleet = scope_fleet
    operator = fleet.scoped["D2"][0]
    receivers = {r["id"] for r in ok(_get(fleet, "/receivers", operator))}
    assert receivers == {"r-D2", "r-C3", "r-V4"}
    stations = {s["name"] for s in ok(_get(fleet, "/stations", operator))}
    assert stations == {"Đài D2", "Đài C3", "Đài V4"}
    commands = ok(_get(fleet, "/commands", operator, limit=1000))
    assert {c["target_ref"] for c in commands} >= {"r-C3", str(fleet.region_ids["sD2"]), str(fleet.region_ids["D2"]),
                                                    str(fleet.region_ids["P1"]), ""}
    assert "r-D23" not in {c["target_ref"] for c in commands}
    assert {s["name"] for s in ok(_get(fleet, "/schedules", operator))} == {"Lịch 0", "Lịch 1"}
    live = ok(_get(fleet, "/live/receivers", operator))
    assert {r["receiver_id"] for r in live["receivers"]} == {"r-D2", "r-C3"}
    assert len(ok(_get(fleet, "/receivers", fleet.admin))) > len(receivers)
