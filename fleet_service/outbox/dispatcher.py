"""Applies the outbox: in the leading worker, in the order the entries were recorded for each
subject, retrying with backoff until each one succeeds."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.outbox import repository as repo
from fleet_service.outbox.service import OutboxKind, Progress

log = logging.getLogger(__name__)

# Entries recorded by another process (the CLI, another API process) are found by polling; a
# change made in this process wakes the dispatcher at once.
POLL_INTERVAL_S = 0.5
BATCH = 100
# Outcomes are recorded together, one transaction for up to this many entries or this long
# (a commit per entry made an import of 10,000 receivers a minute of the worker's time). Entries
# applied but not yet recorded when the process dies are applied again: every side effect is
# idempotent.
SETTLE_BATCH = 100
SETTLE_AFTER_S = 0.1
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
STOP_GRACE_S = 5.0  # what a stopping worker gives the entry in hand

# A side effect: (subject, payload) -> None, raising when it could not be applied. Called in a
# worker thread: broker adapters block.
Handler = Callable[[str, Mapping[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one entry came to, before it is recorded."""

    entry_id: int
    attempts: int  # before this one
    error: str | None


@dataclass
class DispatcherCounters:
    applied: int = 0
    failures: int = 0


class OutboxDispatcher:
    """Runs in the leading worker only (fleet_service/worker), so entries are applied once."""

    def __init__(self, sessions: sessionmaker[Session], handlers: Mapping[OutboxKind, Handler]) -> None:
        self._sessions = sessions
        self._handlers = dict(handlers)
        self.counters = DispatcherCounters()
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._run(), name="outbox")]

    async def stop(self) -> None:
        # Let the entry in hand finish and its outcome be recorded: cancelled in between,
        # an applied entry would stay pending and be applied again by the next worker.
        self._stopping = True
        self._wake.set()
        _, running = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S) if self._tasks else ((), ())
        for task in running:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._stopping = False

    def wake(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def apply_now(self, ids: Sequence[int], timeout: float) -> Progress:
        """From a request's worker thread: wake the dispatcher and wait until ``ids`` are
        applied, or have failed once (they are retried later), or ``timeout`` passes."""
        loop = self._loop
        if loop is None or not ids:
            return Progress(applied=not ids, worker_alive=loop is not None)
        future = asyncio.run_coroutine_threadsafe(self._wait(list(ids), timeout), loop)
        try:
            return future.result(timeout + 1)
        except FutureTimeout:
            return Progress(applied=False, worker_alive=True, errors=("timed out",))

    async def _wait(self, ids: list[int], timeout: float) -> Progress:
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                state = await asyncio.to_thread(self._progress, ids)
                if state.applied or state.errors:
                    return state
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return state
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass

    def _progress(self, ids: list[int]) -> Progress:
        with session_scope(self._sessions) as session:
            entries = repo.get_many(session, ids)
            errors = tuple(e.last_error for e in entries if e.done_at is None and e.last_error)
            return Progress(all(e.done_at is not None for e in entries), True, errors)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._drain()
            except Exception:  # the database is down: try again at the next turn
                log.exception("outbox: could not read pending side effects")
            async with self._changed:
                self._changed.notify_all()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            entries = await asyncio.to_thread(self._due)
            failed: set[tuple[str, str]] = set()
            outcomes: list[Outcome] = []
            since = loop.time()
            for entry_id, kind, subject, payload, attempts in entries:
                if self._stopping:
                    break
                key = repo.order_key(kind, subject)
                if key in failed:
                    continue  # keep the order on this subject: it waits for the retry
                error = await self._apply(kind, subject, payload)
                outcomes.append(Outcome(entry_id, attempts, error))
                if error is not None:
                    failed.add(key)
                if error is not None or len(outcomes) >= SETTLE_BATCH or loop.time() - since >= SETTLE_AFTER_S:
                    await self._record(outcomes)
                    outcomes, since = [], loop.time()
            await self._record(outcomes)
            if len(entries) < BATCH or failed or self._stopping:
                return

    async def _record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        await asyncio.to_thread(self._settle, outcomes)
        async with self._changed:
            self._changed.notify_all()

    def _due(self) -> list[tuple[int, str, str, dict[str, Any], int]]:
        with session_scope(self._sessions) as session:
            return [(e.id, e.kind, e.subject, json.loads(e.payload or "{}"), e.attempts)
                    for e in repo.due(session, utcnow(), BATCH)]

    async def _apply(self, kind: str, subject: str, payload: Mapping[str, Any]) -> str | None:
        try:
            handler = self._handlers[OutboxKind(kind)]
        except (ValueError, KeyError):
            log.error("outbox: no handler for %r (entry about %s): marked done", kind, subject)
            return None
        try:
            await asyncio.to_thread(handler, subject, payload)
        except Exception as exc:
            self.counters.failures += 1
            return f"{exc.__class__.__name__}: {exc}"
        self.counters.applied += 1
        return None

    def _settle(self, outcomes: list[Outcome]) -> None:
        with session_scope(self._sessions) as session:
            entries = {entry.id: entry for entry in repo.get_many(session, [o.entry_id for o in outcomes])}
            now = utcnow()
            for outcome in outcomes:
                entry = entries[outcome.entry_id]
                entry.attempts = outcome.attempts + 1
                if outcome.error is None:
                    entry.done_at = now
                    entry.payload = "{}"  # a password is kept only until applied
                    entry.last_error = None
                    continue
                delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(outcome.attempts, 10)) * random.uniform(0.8, 1.2)
                entry.available_at = now + timedelta(seconds=delay)
                entry.last_error = outcome.error[:2000]
                log.warning("outbox: %s for %s failed (attempt %d), retrying in %.0f s: %s",
                            entry.kind, entry.subject, entry.attempts, delay, outcome.error)
