"""The outbox: side effects recorded with their change, applied in order, retried until they
succeed, followed by the API and the CLI."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope
from fleet_service.outbox import service as outbox
from fleet_service.outbox.dispatcher import OutboxDispatcher
from fleet_service.outbox.models import OutboxEntry
from fleet_service.outbox.service import OutboxKind
from fleet_service.worker.service import LeaderLease


class FlakyBroker:
    """Refuses its first ``failures`` calls, as a broker that is down for a while."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.applied: list[tuple[str, str]] = []

    def handlers(self) -> dict[OutboxKind, Any]:
        def login_set(subject: str, payload: Mapping[str, Any]) -> None:
            self._call("set", subject, payload)

        def login_removed(subject: str, payload: Mapping[str, Any]) -> None:
            self._call("removed", subject, payload)

        return {OutboxKind.RECEIVER_LOGIN_SET: login_set, OutboxKind.RECEIVER_LOGIN_REMOVED: login_removed}

    def _call(self, what: str, subject: str, payload: Mapping[str, Any]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("broker down")
        self.applied.append((what, f"{subject}:{payload.get('password', '')}"))


def record(sessions: sessionmaker[Session], *changes: tuple[OutboxKind, str, str | None]) -> list[int]:
    with session_scope(sessions) as session:
        for kind, subject, password in changes:
            outbox.record(session, kind, subject, {"password": password} if password else None)
        return outbox.recorded(session)


def entries(sessions: sessionmaker[Session]) -> list[OutboxEntry]:
    with session_scope(sessions) as session:
        return list(session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))


async def until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_entries_from_another_process_are_applied_in_order_and_their_secrets_emptied(session_factory):
    broker = FlakyBroker()
    dispatcher = OutboxDispatcher(session_factory, broker.handlers())
    await dispatcher.start()
    try:
        # Recorded as the CLI records them: committed, nobody woken.
        started = time.monotonic()
        record(session_factory, (OutboxKind.RECEIVER_LOGIN_SET, "rx-1", "first"),
               (OutboxKind.RECEIVER_LOGIN_SET, "rx-1", "second"), (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-1", None))
        await until(lambda: len(broker.applied) == 3)
        assert time.monotonic() - started < 3  # found by polling within about a second
    finally:
        await dispatcher.stop()
    assert broker.applied == [("set", "rx-1:first"), ("set", "rx-1:second"), ("removed", "rx-1:")]
    rows = entries(session_factory)
    assert all(r.done_at is not None and json.loads(r.payload) == {} for r in rows)


async def test_a_failed_entry_is_retried_and_holds_back_what_follows(session_factory):
    broker = FlakyBroker(failures=2)
    dispatcher = OutboxDispatcher(session_factory, broker.handlers())
    await dispatcher.start()
    try:
        record(session_factory, (OutboxKind.RECEIVER_LOGIN_SET, "rx-1", "pw"),
               (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-1", None))
        await until(lambda: entries(session_factory)[0].attempts >= 1)
        first, second = entries(session_factory)
        assert first.done_at is None and "broker down" in (first.last_error or "")
        assert json.loads(first.payload) == {"password": "pw"}  # kept until applied
        assert second.done_at is None and second.attempts == 0  # the revoke waits its turn
        await until(lambda: len(broker.applied) == 2, timeout=15)
    finally:
        await dispatcher.stop()
    assert broker.applied == [("set", "rx-1:pw"), ("removed", "rx-1:")]
    assert [r.attempts for r in entries(session_factory)] == [3, 1]


async def test_a_stopping_worker_records_the_entry_it_was_applying(session_factory):
    # Cancelled between applying and recording, the entry would stay pending and the next
    # worker would apply it a second time.
    applying, release = threading.Event(), threading.Event()

    def slow_login_removed(subject: str, payload: Mapping[str, Any]) -> None:
        applying.set()
        release.wait(5)

    dispatcher = OutboxDispatcher(session_factory, {OutboxKind.RECEIVER_LOGIN_REMOVED: slow_login_removed})
    await dispatcher.start()
    record(session_factory, (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-1", None),
           (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-2", None))
    dispatcher.wake()
    await until(applying.is_set)
    stopping = asyncio.create_task(dispatcher.stop())
    await asyncio.sleep(0.2)
    release.set()
    await stopping
    first, second = entries(session_factory)
    assert first.done_at is not None and first.attempts == 1
    assert second.done_at is None and second.attempts == 0  # left for the next worker


async def test_the_cli_waits_for_a_live_worker_and_not_for_a_dead_one(session_factory):
    ids = record(session_factory, (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-9", None))
    started = time.monotonic()
    state = await asyncio.to_thread(outbox.wait_applied, session_factory, ids, timeout=10)
    assert not state.applied and not state.worker_alive
    assert time.monotonic() - started < 1  # no worker: nobody to wait for

    broker = FlakyBroker()
    lease = LeaderLease(session_factory, holder="worker-1")
    assert await lease.acquire()  # a leading worker runs the dispatcher
    dispatcher = OutboxDispatcher(session_factory, broker.handlers())
    await dispatcher.start()
    try:
        state = await asyncio.to_thread(outbox.wait_applied, session_factory, ids, timeout=10)
        assert state.applied and state.worker_alive
    finally:
        await dispatcher.stop()
        await lease.release()
    assert broker.applied == [("removed", "rx-9:")]
    # A worker that stopped says so: the CLI does not wait for it either.
    later = record(session_factory, (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-9", None))
    assert not (await asyncio.to_thread(outbox.wait_applied, session_factory, later, timeout=10)).worker_alive


async def test_a_request_waits_for_its_own_entries_and_hears_of_a_failure(session_factory):
    broker = FlakyBroker(failures=1)
    dispatcher = OutboxDispatcher(session_factory, broker.handlers())
    await dispatcher.start()
    try:
        ids = record(session_factory, (OutboxKind.RECEIVER_LOGIN_SET, "rx-2", "pw"))
        state = await asyncio.to_thread(dispatcher.apply_now, ids, 10)
        assert not state.applied and "broker down" in state.errors[0]
        await until(lambda: broker.applied == [("set", "rx-2:pw")], timeout=15)
        ids = record(session_factory, (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-2", None))
        state = await asyncio.to_thread(dispatcher.apply_now, ids, 10)
        assert state.applied
    finally:
        await dispatcher.stop()


async def test_one_subject_waiting_for_its_retry_does_not_hold_back_the_others(session_factory):
    broker = FlakyBroker(failures=1)
    dispatcher = OutboxDispatcher(session_factory, broker.handlers())
    await dispatcher.start()
    try:
        record(session_factory, (OutboxKind.RECEIVER_LOGIN_SET, "rx-1", "a"),
               (OutboxKind.RECEIVER_LOGIN_REMOVED, "rx-1", None), (OutboxKind.RECEIVER_LOGIN_SET, "rx-2", "b"))
        await until(lambda: broker.applied == [("set", "rx-2:b")], timeout=5)  # rx-1 waits for its retry
        await until(lambda: len(broker.applied) == 3, timeout=15)
    finally:
        await dispatcher.stop()
    assert broker.applied == [("set", "rx-2:b"), ("set", "rx-1:a"), ("removed", "rx-1:")]
