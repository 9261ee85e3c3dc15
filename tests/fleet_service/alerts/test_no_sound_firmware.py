"""No sound during a slot, end to end: the real firmware (MicroPython) gets its station's
schedule from a running service, its slot's stream is unreachable when the slot starts, and
the service raises the incident."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet_service.alerts.models import Incident, RuleOverride
from fleet_service.auth.models import Role
from fleet_service.commands.service import Issuer
from fleet_service.db import session_scope, utcnow
from fleet_service.schedules import service as schedules
from fleet_service.schedules.schemas import ScheduleCreate, SlotIn
from fleet_service.timefmt import LOCAL_ZONE
from simulators.firmware import unavailable_reason
from simulators.fleet import Fleet
from tests.support.fleet import provision_fleet
from tests.support.ports import free_port
from tests.support.service import running_service, service_settings
from tests.support.waiting import wait_until

needs_micropython = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))
# Time for the firmware to boot, connect and hold its schedule before the slot begins.
LEAD_S = 15


@needs_micropython
async def test_a_firmware_receiver_whose_stream_is_unreachable_at_slot_time_raises_no_sound(sqlite_url, tmp_path: Path):
    start = (utcnow() + timedelta(seconds=LEAD_S)).astimezone(LOCAL_ZONE)
    end = start + timedelta(minutes=3)
    if end.date() != start.date():
        pytest.skip("a slot cannot run across local midnight; this minute is too close to it")
    settings = service_settings(sqlite_url)
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=1, stations=1)
        with session_scope(runtime.sessions) as session:
            session.add(RuleOverride(region_key=0, kind="no_sound", pending_s=10, hold_s=5, group_wait_s=0,
                                     updated_by="test"))
            schedules.create_schedule(session, ScheduleCreate(name="Bản tin trưa", station=fleet.station_ids[0], slots=[
                SlotIn(start=start.strftime("%H:%M:%S"), end=end.strftime("%H:%M:%S"),
                       url=f"http://127.0.0.1:{free_port()}/ban-tin-trua.mp3")]),  # nobody listens there
                Issuer(None, "kythuat", Role.ADMIN, None))
        receivers = Fleet("127.0.0.1", settings.mqtt_port, fleet.credentials, firmware_receivers=["rx-0"],
                          firmware_dir=tmp_path / "flash", keepalive=2, telemetry_interval=5.0, attach_delay=(0.0, 0.1),
                          backoff_base=0.2, backoff_cap=1.0)
        await receivers.start()
        try:
            def raised() -> list[Incident]:
                with session_scope(runtime.sessions) as session:
                    found = list(session.scalars(select(Incident).where(Incident.kind == "no_sound")))
                    session.expunge_all()
                return found

            await wait_until(lambda: len(raised()) == 1, timeout=LEAD_S + 45, what="the no-sound incident")
        finally:
            await receivers.stop()
    incident, = raised()
    assert (incident.receiver_id, incident.severity, incident.state) == ("rx-0", "critical", "open")
    assert incident.started_at.astimezone(LOCAL_ZONE).strftime("%H:%M:%S") == start.strftime("%H:%M:%S")
    assert incident.value is not None and incident.value.endswith(": error")
