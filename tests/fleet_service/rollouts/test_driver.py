"""The rollout driver in a running worker (embedded broker, ingest, delivery), with receivers
played at the MQTT level that carry out ``update`` commands as protocol 1.2 says: waves one
after another, the thresholds, the window, the pace, births, timeouts, withdrawal, and a worker
restarted in the middle of a rollout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from fleet_service.commands.models import Command
from fleet_service.config import Settings
from fleet_service.db import session_scope, utcnow
from fleet_service.firmware.models import FirmwareRelease
from fleet_service.registry import service as registry
from fleet_service.rollouts import service as rollouts
from fleet_service.rollouts.models import Rollout, RolloutTarget
from fleet_service.rollouts.schemas import RolloutCreate, WindowIn
from fleet_service.runtime import Runtime
from fleet_service.timefmt import LOCAL_ZONE
from fleet_service.worker.status import ingest_status_here
from tests.fleet_service.rollouts.receivers import CONFIRMS, FAILS, SILENT, UpdatingReceiver
from tests.fleet_service.rollouts.test_service import ADMIN, add_release
from tests.support.fleet import SmallFleet, provision_fleet
from tests.support.service import running_service, service_settings
from tests.support.waiting import wait_until


@dataclass
class Setup:
    runtime: Runtime
    fleet: SmallFleet
    release_id: int

    def receiver(self, receiver_id: str, **kwargs) -> UpdatingReceiver:  # type: ignore[no-untyped-def]
        return UpdatingReceiver(receiver_id, self.fleet.credentials[receiver_id], self.runtime.settings.mqtt_port,
                                **kwargs)

    def create(self, **fields) -> int:  # type: ignore[no-untyped-def]
        with session_scope(self.runtime.sessions) as session:
            return rollouts.create_rollout(session, RolloutCreate(name="1.4.0", release_id=self.release_id,
                                                                  **fields), ADMIN).id

    def rollout(self, rollout_id: int) -> Rollout:
        with session_scope(self.runtime.sessions) as session:
            found = session.get(Rollout, rollout_id)
            assert found is not None
            session.expunge(found)
            return found

    def targets(self, rollout_id: int) -> dict[str, RolloutTarget]:
        with session_scope(self.runtime.sessions) as session:
            rows = list(session.scalars(select(RolloutTarget).where(RolloutTarget.rollout_id == rollout_id)))
            session.expunge_all()
        return {t.receiver_id: t for t in rows}

    def states(self, rollout_id: int) -> dict[str, str]:
        return {rid: t.state for rid, t in self.targets(rollout_id).items()}

    def wave(self, rollout_id: int, wave: int) -> list[str]:
        return sorted(rid for rid, t in self.targets(rollout_id).items() if t.wave == wave)


@contextlib.asynccontextmanager
async def setup(db_url: str, receivers: int = 4, settings: Settings | None = None) -> AsyncIterator[Setup]:
    settings = settings or service_settings(db_url, firmware_base_url="http://loa.example:8080")
    async with running_service(settings) as runtime:
        fleet = provision_fleet(runtime.sessions, receivers=receivers, stations=2)
        with session_scope(runtime.sessions) as session:
            release_id = add_release(session)
        yield Setup(runtime, fleet, release_id)


async def all_online(receivers: list[UpdatingReceiver], stack: contextlib.AsyncExitStack) -> None:
    for rx in receivers:
        await stack.enter_async_context(rx.online())


async def test_a_rollout_completes_wave_by_wave_the_canary_first(db_url):
    async with setup(db_url) as s:
        rollout_id = s.create(waves=["1", "100%"], success_percent=100, min_finished=1)
        canary_id, = s.wave(rollout_id, 0)
        gate = asyncio.Event()
        receivers = {rid: s.receiver(rid, gate=gate if rid == canary_id else None) for rid in s.fleet.credentials}
        async with contextlib.AsyncExitStack() as stack:
            await all_online(list(receivers.values()), stack)
            await wait_until(lambda: s.states(rollout_id)[canary_id] == "offered", timeout=10, what="the canary offered")
            await asyncio.sleep(2.5)  # several turns of the driver
            assert sum(rx.offers for rid, rx in receivers.items() if rid != canary_id) == 0
            assert s.rollout(rollout_id).current_wave == 0
            gate.set()
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=20, what="completed")
        rollout = s.rollout(rollout_id)
        assert rollout.current_wave == 1 and rollout.finished_at is not None
        targets = s.targets(rollout_id)
        assert {t.state for t in targets.values()} == {"confirmed"}
        assert all(t.attempts == 1 and t.detail == {"got": 8000} for t in targets.values())
        assert targets[canary_id].offered_at < min(t.offered_at for rid, t in targets.items() if rid != canary_id)
        assert {rid: rx.offers for rid, rx in receivers.items()} == {rid: 1 for rid in receivers}
        command = receivers[canary_id].updates[0]
        assert (command["rel"], command["ver"], command["hw"], command["down"]) == (s.release_id, "1.4.0", "esp32-a7670", False)
        assert command["url"] == f"http://loa.example:8080/api/v1/firmware/download/{s.release_id}"
        assert command["exp"] - command["ts"] == 1800 and command["jit"] == 30
        with session_scope(s.runtime.sessions) as session:
            ops = Counter(session.scalars(select(Command.op)))
            issuers = set(session.scalars(select(Command.issuer_name)))
        assert ops == {"update": 4} and issuers == {"admin"}
        # The worker's own figures, as GET /ingest/status gives them.
        status = ingest_status_here(s.runtime)
        assert status is not None
        assert (status.rollout_offers, status.rollout_failures) == (4, 0)
        assert status.rollout_reports >= 8  # offered, downloading, …, confirmed: batched, several each


async def test_failures_past_the_error_threshold_pause_the_rollout_until_retried(sqlite_url):
    async with setup(sqlite_url, receivers=6) as s:
        rollout_id = s.create(waves=["2", "100%"], error_percent=20, min_finished=2)
        receivers = [s.receiver(rid, steps=list(FAILS)) for rid in s.fleet.credentials]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: s.rollout(rollout_id).state == "paused", timeout=15, what="paused")
            await asyncio.sleep(2)
            rollout = s.rollout(rollout_id)
            assert "2/2" in rollout.state_reason and "2 of 2 finished receivers failed" in rollout.state_reason
            states = s.states(rollout_id)
            assert Counter(states.values()) == {"failed": 2, "pending": 4}
            assert sum(rx.offers for rx in receivers) == 2
            failed = [t for t in s.targets(rollout_id).values() if t.state == "failed"]
            assert {(t.reason, t.detail["got"]) for t in failed} == {("hash", 8100)}
            # Fixed (a flaky download server, say): retried and resumed, the canaries are offered
            # again, with a new command each, and the rollout goes on to the end.
            for rx in receivers:
                rx.steps = list(CONFIRMS)
            with session_scope(s.runtime.sessions) as session:
                assert rollouts.retry_failed(session, rollout_id, ADMIN) == 2
                rollouts.resume(session, rollout_id, ADMIN)
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=15, what="completed")
        targets = s.targets(rollout_id).values()
        assert Counter((t.state, t.attempts) for t in targets) == {("confirmed", 2): 2, ("confirmed", 1): 4}
        assert sorted(rx.offers for rx in receivers) == [1, 1, 1, 1, 2, 2]


async def test_nothing_is_offered_outside_the_window(sqlite_url):
    async with setup(sqlite_url, receivers=2) as s:
        now = datetime.now(LOCAL_ZONE)
        closed = WindowIn(start=(now + timedelta(hours=2)).strftime("%H:%M"),
                          end=(now + timedelta(hours=3)).strftime("%H:%M"))
        rollout_id = s.create(window=closed, waves=["100%"])
        receivers = [s.receiver(rid) for rid in s.fleet.credentials]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await asyncio.sleep(3)
            assert set(s.states(rollout_id).values()) == {"pending"} and sum(rx.offers for rx in receivers) == 0
            # The window opens (moved to now): offered at once.
            with session_scope(s.runtime.sessions) as session:
                session.execute(update(Rollout).where(Rollout.id == rollout_id).values(
                    window_start=(now - timedelta(hours=1)).strftime("%H:%M"),
                    window_end=(now + timedelta(hours=1)).strftime("%H:%M")))
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=10, what="completed")


async def test_offers_are_paced(sqlite_url):
    async with setup(sqlite_url, receivers=3) as s:
        rollout_id = s.create(waves=["100%"], per_minute=30)  # one at once, then one every 2 s
        receivers = [s.receiver(rid) for rid in s.fleet.credentials]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=15, what="completed")
        offered = sorted(t.offered_at for t in s.targets(rollout_id).values())
        gaps = [(b - a).total_seconds() for a, b in zip(offered, offered[1:], strict=False)]
        assert all(gap >= 1.5 for gap in gaps), gaps


async def test_an_offline_receiver_is_offered_at_its_birth_and_a_revoked_one_cancelled(sqlite_url):
    async with setup(sqlite_url, receivers=3) as s:
        rollout_id = s.create(waves=["100%"])
        with session_scope(s.runtime.sessions) as session:
            registry.revoke(session, "rx-2")
        rx0, rx1 = s.receiver("rx-0"), s.receiver("rx-1")
        async with rx0.online():
            await wait_until(lambda: s.states(rollout_id)["rx-0"] == "confirmed", timeout=10, what="rx-0 confirmed")
            await asyncio.sleep(1.5)
            assert s.states(rollout_id)["rx-1"] == "pending" and rx1.offers == 0
            born = time.monotonic()
            async with rx1.online():
                await wait_until(lambda: rx1.offers == 1, timeout=5, what="rx-1 offered")
                took = time.monotonic() - born
                await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=10, what="completed")
        assert took < 4.0, took
        assert s.states(rollout_id) == {"rx-0": "confirmed", "rx-1": "confirmed", "rx-2": "cancelled"}


async def test_a_silent_receiver_times_out(sqlite_url):
    async with setup(sqlite_url, receivers=2) as s:
        rollout_id = s.create(waves=["100%"], success_percent=50, min_finished=2, error_percent=50)
        with session_scope(s.runtime.sessions) as session:  # the API's least is a minute
            session.execute(update(Rollout).where(Rollout.id == rollout_id).values(step_timeout_s=2))
        receivers = [s.receiver("rx-0"), s.receiver("rx-1", steps=list(SILENT))]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=15, what="completed")
        target = s.targets(rollout_id)["rx-1"]
        assert (target.state, target.reason) == ("failed", "timeout")
        assert s.states(rollout_id)["rx-0"] == "confirmed"


async def test_a_receiver_heard_running_the_release_without_its_confirmation_counts_as_confirmed(sqlite_url):
    # Its last status (rebooting) was the last word heard: a broker that lost the retained
    # confirmation, say. Reborn running the release, it is confirmed at the step's time-out;
    # one reborn on its old version times out.
    async with setup(sqlite_url, receivers=2) as s:
        rollout_id = s.create(waves=["100%"], success_percent=50, min_finished=2, error_percent=50)
        with session_scope(s.runtime.sessions) as session:  # the API's least is a minute
            session.execute(update(Rollout).where(Rollout.id == rollout_id).values(step_timeout_s=3))
        receivers = [s.receiver(rid, steps=CONFIRMS[:-1]) for rid in ("rx-0", "rx-1")]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: set(s.states(rollout_id).values()) == {"rebooting"}, timeout=10,
                             what="both rebooting")
        receivers[0].firmware = "loa-fw-1.4.0"
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=15, what="completed")
        targets = s.targets(rollout_id)
        assert (targets["rx-0"].state, targets["rx-0"].reason) == ("confirmed", "seen_running")
        assert (targets["rx-1"].state, targets["rx-1"].reason) == ("failed", "timeout")


async def test_a_withdrawn_release_stops_the_rollout(sqlite_url):
    async with setup(sqlite_url, receivers=3) as s:
        rollout_id = s.create(waves=["1", "100%"], success_percent=100, min_finished=1)
        canary_id, = s.wave(rollout_id, 0)
        gate = asyncio.Event()
        receivers = [s.receiver(rid, gate=gate) for rid in s.fleet.credentials]
        async with contextlib.AsyncExitStack() as stack:
            await all_online(receivers, stack)
            await wait_until(lambda: s.states(rollout_id)[canary_id] == "offered", timeout=10, what="offered")
            with session_scope(s.runtime.sessions) as session:  # as the API does, less its outbox entry
                session.execute(update(FirmwareRelease).where(FirmwareRelease.id == s.release_id)
                                .values(withdrawn_at=utcnow()))
            await wait_until(lambda: s.rollout(rollout_id).state == "stopped", timeout=10, what="stopped")
            gate.set()
            await asyncio.sleep(1.5)
        states = s.states(rollout_id)
        assert Counter(states.values()) == {"cancelled": 2, "confirmed": 1}
        assert sum(rx.offers for rx in receivers) == 1


async def test_a_restarted_worker_continues_without_offering_twice(db_url):
    settings = service_settings(db_url)
    gate = asyncio.Event()
    async with setup(db_url, settings=settings) as s:
        rollout_id = s.create(waves=["2", "100%"], success_percent=100, min_finished=1)
        canaries = s.wave(rollout_id, 0)
        receivers = {rid: s.receiver(rid, gate=gate) for rid in s.fleet.credentials}
        stack = contextlib.AsyncExitStack()
        await all_online(list(receivers.values()), stack)
        await wait_until(lambda: all(s.states(rollout_id)[c] == "offered" for c in canaries), timeout=10,
                         what="the canaries offered")
        await wait_until(lambda: all(receivers[c].offers == 1 for c in canaries), timeout=5)
    with contextlib.suppress(Exception):  # the broker went with the worker
        await stack.aclose()
    async with running_service(settings) as runtime:
        s.runtime = runtime
        gate.set()
        async with contextlib.AsyncExitStack() as stack:
            await all_online(list(receivers.values()), stack)  # each carries on what it was doing
            await wait_until(lambda: s.rollout(rollout_id).state == "completed", timeout=20, what="completed")
        targets = s.targets(rollout_id)
        assert {t.state for t in targets.values()} == {"confirmed"}
        assert all(t.attempts == 1 for t in targets.values())
        assert {rid: rx.offers for rid, rx in receivers.items()} == {rid: 1 for rid in receivers}
        with session_scope(runtime.sessions) as session:
            assert Counter(session.scalars(select(Command.op))) == {"update": 4}
