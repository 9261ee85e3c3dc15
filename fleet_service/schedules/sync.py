"""Bringing receivers' schedules up to date when the registry changed under them.

A receiver registered after its station's schedules were pushed, moved to another station, or
under a region that moved, should hold a different schedule from the one it was last sent (or
none was sent). Each birth is the moment to check: births are collected and checked in
batches, one set of queries for a whole fleet coming back after an outage (or for every
retained birth when the service starts), and only receivers whose schedule differs from the
one last sent get a new version."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.commands.service import Created
from fleet_service.db import session_scope
from fleet_service.schedules import service

log = logging.getLogger(__name__)

# Births are gathered this long before one check of all of them.
SYNC_INTERVAL_S = 2.0
RETRY_MAX_S = 60.0


class ScheduleSync:
    def __init__(self, sessions: sessionmaker[Session], *, submit: Callable[[Created], None]) -> None:
        self._sessions = sessions
        self._submit = submit
        self._due: set[str] = set()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.checked = 0   # births checked
        self.sent = 0      # schedule commands sent
        self.failures = 0  # checks that failed (the database unreachable) and were retried

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="schedule-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def on_birth(self, receiver_id: str) -> None:
        self._due.add(receiver_id)
        self._ready.set()

    def check(self, receiver_ids: list[str]) -> None:
        """Receivers whose schedule may have changed under them (the registry changed): checked
        with the next batch, like births."""
        if receiver_ids:
            self._due.update(receiver_ids)
            self._ready.set()

    async def _run(self) -> None:
        delay = 1.0
        while True:
            await self._ready.wait()
            await asyncio.sleep(SYNC_INTERVAL_S)
            self._ready.clear()
            batch, self._due = self._due, set()
            try:
                created = await asyncio.to_thread(self._check, sorted(batch))
            except Exception as exc:
                self.failures += 1
                log.error("checking the schedules of %d receivers failed (%s); retrying in %.0f s",
                          len(batch), exc.__class__.__name__, delay)
                self._due |= batch
                self._ready.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            delay = 1.0
            self.checked += len(batch)
            for made in created:
                self.sent += 1
                self._submit(made)
            if created:
                log.info("schedules brought up to date: %d receivers",
                         sum(len(made.receiver_ids) for made in created))

    def _check(self, receiver_ids: list[str]) -> list[Created]:
        with session_scope(self._sessions) as session:
            return service.bring_up_to_date(session, receiver_ids)
