"""The worker role: wait for the leader lease; while holding it, run what the composition
(fleet_service/worker/composition.py) builds: telemetry, the broker, ingest, the outbox,
delivery, schedules and the status report; step down if the lease is lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fleet_service.mqtt.adapter import service_client_id
from fleet_service.runtime import Runtime
from fleet_service.worker.service import STANDBY_POLL_S, LeaderLease

log = logging.getLogger(__name__)


@asynccontextmanager
async def worker_role(runtime: Runtime) -> AsyncIterator[LeaderLease]:
    """Run the worker in the background for the duration of the block. Entering it waits for
    the first decision: leading with the MQTT side up (or still connecting, as it says), or
    standing by for another worker's lease."""
    lease = LeaderLease(runtime.sessions, holder=service_client_id())
    decided = asyncio.Event()
    task = asyncio.create_task(_lead_when_possible(runtime, lease, decided), name="worker")
    waiter = asyncio.create_task(decided.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # it failed before deciding: say why
    try:
        yield lease
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _lead_when_possible(runtime: Runtime, lease: LeaderLease, decided: asyncio.Event) -> None:
    from fleet_service.worker.composition import run_worker_side

    standing_by = False
    try:
        while True:
            if await lease.acquire():
                log.info("worker %s leads: MQTT ingest, delivery and workflows run here", lease.holder)
                standing_by = False
                async with run_worker_side(runtime, client_id=lease.holder):
                    decided.set()
                    await lease.hold()
                continue
            if not standing_by:
                log.info("worker %s stands by: another worker leads", lease.holder)
                standing_by = True
            decided.set()
            await asyncio.sleep(STANDBY_POLL_S)
    finally:
        await lease.release()


async def run_worker_until_stopped(runtime: Runtime, stop: asyncio.Event) -> None:
    """``loa serve --role worker``: the worker alone, until ``stop`` is set."""
    async with worker_role(runtime):
        await stop.wait()
