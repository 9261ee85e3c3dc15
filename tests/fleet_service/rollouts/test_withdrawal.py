"""Withdrawing a release through the firmware service reaches its rollouts through the outbox:
the leading worker stops them and cancels what was not offered yet."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from fleet_service.db import session_scope
from fleet_service.firmware import service as firmware
from fleet_service.rollouts import service as rollouts
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.rollouts.schemas import RolloutCreate
from fleet_service.scope import RegionScope
from tests.fleet_service.rollouts.test_service import ADMIN, add_release
from tests.support.fleet import provision_fleet
from tests.support.service import running_service, service_settings
from tests.support.waiting import wait_until


async def test_a_withdrawn_release_stops_its_rollouts_in_the_worker(sqlite_url):
    async with running_service(service_settings(sqlite_url)) as runtime:
        provision_fleet(runtime.sessions, receivers=4, stations=2)
        with session_scope(runtime.sessions) as session:
            release_id = add_release(session)
            rollout_id = rollouts.create_rollout(session, RolloutCreate(name="a", release_id=release_id), ADMIN).id
            session.get(RolloutTarget, (rollout_id, "rx-0")).state = TargetState.INSTALLING.value
        with session_scope(runtime.sessions) as session:
            firmware.withdraw(session, release_id, "lỗi âm thanh", firmware.Actor(None, "kythuat"))
        runtime.outbox.wake()

        def state() -> str:
            with session_scope(runtime.sessions) as session:
                return rollouts.get_rollout(session, rollout_id, RegionScope()).state

        await wait_until(lambda: state() == "stopped", timeout=10, what="the rollout stopped")
        with session_scope(runtime.sessions) as session:
            states = Counter(session.scalars(select(RolloutTarget.state).where(RolloutTarget.rollout_id == rollout_id)))
        assert states == {"cancelled": 3, "installing": 1}
