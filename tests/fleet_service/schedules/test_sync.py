"""The birth-time schedule check when PostgreSQL goes away: the births wait, nothing is lost,
and the receiver gets its schedule once the database answers again."""

from __future__ import annotations

import pytest

from fleet_service.auth.models import Role
from fleet_service.commands.service import Created, Issuer
from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.migrations import upgrade
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.schedules import service, sync
from fleet_service.schedules.schemas import ScheduleCreate, SlotIn
from fleet_service.schedules.sync import ScheduleSync
from tests.fleet_service.ingest.test_database_outage import set_database_open
from tests.support.postgres import postgres_available, scratch_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.postgres


async def test_births_seen_while_the_database_is_down_are_checked_once_it_is_back(monkeypatch):
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432")
    monkeypatch.setattr(sync, "SYNC_INTERVAL_S", 0.1)
    with scratch_database() as url:
        upgrade(url)
        name = url.rsplit("/", 1)[1]
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        try:
            with session_scope(sessions) as s:
                region = registry.create_region(s, RegionCreate(name="Cát Nê", level="xã"))
                station = registry.create_station(s, StationCreate(region_id=region.id, name="Đài Cát Nê"))
                service.create_schedule(s, ScheduleCreate(name="Sáng", station=station.id, slots=[
                    SlotIn(start="05:30", end="06:00", url="http://127.0.0.1:9/live.mp3")]),
                    Issuer(None, "admin", Role.ADMIN, None))
                # Registered after the schedule was pushed: it has none yet.
                registry.register_receiver(s, ReceiverCreate(id="cn-1", hardware_id="hw-1", station_id=station.id))
            sent: list[Created] = []
            checker = ScheduleSync(sessions, submit=sent.append)
            await checker.start()
            try:
                set_database_open(name, False)
                try:
                    checker.on_birth("cn-1")
                    await wait_until(lambda: checker.failures >= 1, timeout=20, what="a failed check")
                    assert sent == []
                finally:
                    set_database_open(name, True)
                await wait_until(lambda: len(sent) == 1, timeout=40, what="the check after the outage")
            finally:
                await checker.stop()
            assert sent[0].receiver_ids == ["cn-1"] and checker.checked == 1
            with session_scope(sessions) as s:
                assert service.expected_of(s, "cn-1").command_id == sent[0].command.id
        finally:
            engine.dispose()
