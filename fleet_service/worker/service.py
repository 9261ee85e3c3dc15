"""The leader lease: exactly one worker drives ingest, delivery and the workflows at a time;
another waits and takes over within seconds when the leader dies."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.worker import repository as repo

log = logging.getLogger(__name__)

LEADER = "leader"
# A leader renews its lease this often; a lease not renewed for LEASE_TTL is free. A worker
# waiting for it asks every STANDBY_POLL_S: a dead leader is replaced within TTL + poll, a
# leader that stops cleanly at once. Hosts keep their clocks in sync (NTP): the lease compares
# each process's own clock.
RENEW_INTERVAL_S = 1.5
LEASE_TTL = timedelta(seconds=6)
STANDBY_POLL_S = 1.0


class LeaderLease:
    def __init__(self, sessions: sessionmaker[Session], holder: str, name: str = LEADER) -> None:
        self._sessions = sessions
        self.holder = holder
        self.name = name

    async def acquire(self) -> bool:
        """Take the lease if it is free (or renew it if ours). A database that cannot be
        reached answers no."""
        try:
            return await asyncio.to_thread(self._acquire)
        except Exception as exc:
            log.warning("leader lease: database unreachable (%s)", exc.__class__.__name__)
            return False

    async def hold(self) -> None:
        """Renew the lease until another process has it; return then. While the database cannot
        be reached the leader keeps leading: nobody else can take the lease meanwhile."""
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            try:
                if not await asyncio.to_thread(self._acquire):
                    log.error("leader lease lost to another worker: stepping down")
                    return
            except Exception as exc:
                log.warning("leader lease not renewed, database unreachable (%s); still leading",
                            exc.__class__.__name__)

    async def release(self) -> None:
        try:
            await asyncio.to_thread(self._release)
        except Exception as exc:
            log.warning("leader lease not released (%s); it expires by itself", exc.__class__.__name__)

    def _acquire(self) -> bool:
        now = utcnow()
        with session_scope(self._sessions) as session:
            return repo.try_acquire(session, self.name, self.holder, now, now + LEASE_TTL)

    def _release(self) -> None:
        with session_scope(self._sessions) as session:
            repo.release(session, self.name, self.holder, utcnow())


def current_leader(session: Session) -> str | None:
    """The process leading now, or None when no worker is alive."""
    return repo.current_holder(session, LEADER, utcnow())
