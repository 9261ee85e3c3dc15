"""Getting each command to each of its receivers exactly once, and recording what they answer.

Delivery is at least once: a command is published when it is created to every target that is
online, again at each birth of a target that has not answered, and again if a target online
says nothing for RESEND_AFTER_S. Execution is at most once: receivers remember the ids they
carried out (docs/protocol.md, "Never twice"). Outcomes are kept in memory for the live
view and written to the database in batches, so that ten thousand acknowledgements a second
cost a few transactions, not ten thousand."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.commands import repository
from fleet_service.commands.models import TargetStatus
from fleet_service.commands.service import Created, payload_of
from fleet_service.db import session_scope, utcnow
from fleet_service.protocol.messages import Ack, AckStatus, CommandOp
from fleet_service.protocol.topics import command_topic

log = logging.getLogger(__name__)

# A receiver subscribes to its cmd topic as it comes online; give it this long after its
# birth before sending what waited for it.
REDELIVER_DELAY_S = 1.0
# A target online that has not answered a delivery this long gets it again (QoS 1 covers one
# connection; this covers a connection that died without either side noticing yet).
RESEND_AFTER_S = 30.0
# How often expiries and resends are checked.
SWEEP_INTERVAL_S = 1.0
# Outcome writes wait until outcomes have stopped arriving for WRITE_QUIET_S, at most
# WRITE_MAX_DELAY_S after the first: during a fleet-wide play the writer then stays off the GIL
# until the acknowledgements are in, and each target's "sent" and "done" become one row.
WRITE_QUIET_S = 0.2
WRITE_MAX_DELAY_S = 5.0
WRITE_BATCH_MAX = 2000
# Targets published per turn of the event loop, so that acknowledgements are read while the
# rest of a large command goes out.
PUBLISH_SLICE = 250
# Progress of this many recent commands is kept in memory for the live view.
PROGRESS_KEPT = 1000
# Operations of which only the newest matters: an older one not yet delivered is superseded.
_LATEST_WINS = frozenset({CommandOp.SCHEDULE.value})

_ACK_STATUS = {
    AckStatus.ACCEPTED: TargetStatus.ACCEPTED,
    AckStatus.DONE: TargetStatus.DONE,
    AckStatus.FAILED: TargetStatus.FAILED,
    AckStatus.REJECTED: TargetStatus.REJECTED,
    AckStatus.EXPIRED: TargetStatus.EXPIRED,
}


@dataclass(slots=True)
class _Open:
    status: TargetStatus
    deliveries: int = 0
    last_sent: float = 0.0  # monotonic; 0: never sent


@dataclass(slots=True)
class _Pending:
    """One command still open for some receivers."""

    op: str
    payload: bytes
    expires_at: datetime
    receivers: set[str] = field(default_factory=set)


@dataclass
class DeliveryCounters:
    published: int = 0
    publish_failed: int = 0    # not connected to the broker at that moment (sent again later)
    acks: int = 0
    acks_unknown: int = 0      # for a command this service never sent to that receiver
    acks_late: int = 0         # for a target already final (a duplicate answer)
    expired: int = 0
    write_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class CommandDelivery:
    def __init__(self, sessions: sessionmaker[Session], *, publish: Callable[[str, bytes], bool],
                 is_online: Callable[[str], bool | None]) -> None:
        self._sessions = sessions
        self._publish = publish
        self._is_online = is_online
        self._commands: dict[str, _Pending] = {}
        self._open: dict[str, dict[str, _Open]] = {}
        self._expiries: list[tuple[datetime, str]] = []
        self._updates: dict[tuple[str, str], dict[str, Any]] = {}
        self._updates_ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress: OrderedDict[str, Counter[str]] = OrderedDict()
        self._prepared: dict[str, Created] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.counters = DeliveryCounters()

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._load)
        self._tasks = [asyncio.create_task(self._writer(), name="command-outcomes"),
                       asyncio.create_task(self._sweeper(), name="command-sweep")]

    async def stop(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), timeout=10)
        except TimeoutError:
            log.error("stopping with %d command outcomes unwritten", len(self._updates))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def flush(self) -> None:
        """Wait until every outcome so far is in the database."""
        while self._updates or not self._idle.is_set():
            await asyncio.sleep(0.01)

    def _load(self) -> None:
        with session_scope(self._sessions) as session:
            for target, command in repository.open_targets(session):
                pending = self._commands.get(command.id)
                if pending is None:
                    pending = self._track(command.id, command.op, payload_of(command), command.expires_at)
                pending.receivers.add(target.receiver_id)
                self._open.setdefault(target.receiver_id, {})[command.id] = _Open(
                    TargetStatus(target.status), target.deliveries)
        if self._commands:
            log.info("%d commands still open for %d receivers", len(self._commands), len(self._open))

    # --- new commands -------------------------------------------------------------------------

    def submit(self, command_id: str, op: str, payload: bytes, expires_at: datetime, receiver_ids: Sequence[str]) -> None:
        """A command was committed: send it to every target online now. Thread-safe."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("command delivery is not running")
        loop.call_soon_threadsafe(self._add, command_id, op, payload, expires_at, list(receiver_ids))

    def submit_created(self, made: Created) -> None:
        """``submit`` for a command as ``commands.service`` returns it. Thread-safe."""
        self.submit(made.command.id, made.command.op, made.payload, made.command.expires_at, made.receiver_ids)

    def prepare(self, made: Created) -> None:
        """A command this process just recorded: its outbox entry, when the dispatcher gets to
        it, is delivered from here rather than read back from the database. Thread-safe."""
        self._prepared[made.command.id] = made

    def deliver_recorded(self, command_id: str) -> None:
        """The outbox's side effect of a recorded command (called in a worker thread): send it
        to its targets still open, once. A command delivery already knows is left alone."""
        made = self._prepared.pop(command_id, None)
        if made is not None:
            self.submit_created(made)
            return
        with session_scope(self._sessions) as session:
            found = repository.open_targets_of_command(session, command_id)
            if found is None:
                return  # every target has its outcome already
            command, receiver_ids = found
            payload = payload_of(command)
        self.submit(command.id, command.op, payload, command.expires_at, receiver_ids)

    def _track(self, command_id: str, op: str, payload: bytes, expires_at: datetime) -> _Pending:
        pending = _Pending(op, payload, expires_at)
        self._commands[command_id] = pending
        heapq.heappush(self._expiries, (expires_at, command_id))
        return pending

    def _add(self, command_id: str, op: str, payload: bytes, expires_at: datetime, receiver_ids: list[str]) -> None:
        if command_id in self._commands or command_id in self._progress:
            return  # known already (loaded at start, or submitted twice): each target gets it once
        pending = self._track(command_id, op, payload, expires_at)
        progress = self._progress_of(command_id)
        progress[TargetStatus.PENDING.value] += len(receiver_ids)
        online: list[str] = []
        for rid in receiver_ids:
            targets = self._open.setdefault(rid, {})
            if op in _LATEST_WINS:
                self._supersede(rid, targets, op)
            targets[command_id] = _Open(TargetStatus.PENDING)
            pending.receivers.add(rid)
            if self._is_online(rid):
                online.append(rid)
        self._send_slice(command_id, online, 0)

    def _send_slice(self, cid: str, receiver_ids: list[str], start: int) -> None:
        now = time.monotonic()
        end = start + PUBLISH_SLICE
        for rid in receiver_ids[start:end]:
            state = self._open.get(rid, {}).get(cid)
            # Still waiting: not answered, superseded, expired or sent at a birth meanwhile.
            if state is not None and state.status is TargetStatus.PENDING:
                self._send(rid, cid, state, now)
        if end < len(receiver_ids) and self._loop is not None:
            self._loop.call_soon(self._send_slice, cid, receiver_ids, end)

    def _supersede(self, rid: str, targets: dict[str, _Open], op: str) -> None:
        for cid, state in list(targets.items()):
            if self._commands[cid].op == op and state.status is not TargetStatus.ACCEPTED:
                self._finish(rid, cid, state, TargetStatus.SUPERSEDED, "superseded", utcnow())

    # --- sending ------------------------------------------------------------------------------

    def _send(self, rid: str, cid: str, state: _Open, now: float) -> None:
        if not self._publish(command_topic(rid), self._commands[cid].payload):
            self.counters.publish_failed += 1
            return
        self.counters.published += 1
        state.deliveries += 1
        state.last_sent = now
        update = self._update(cid, rid, deliveries=state.deliveries)
        if state.status is TargetStatus.PENDING:
            self._move(cid, state, TargetStatus.SENT)
            update.update(status=TargetStatus.SENT.value, first_sent_at=utcnow())

    def on_birth(self, receiver_id: str) -> None:
        """A receiver (re)connected: what waits for it goes out shortly."""
        if receiver_id in self._open and self._loop is not None:
            self._loop.call_later(REDELIVER_DELAY_S, self._redeliver, receiver_id)

    def _redeliver(self, rid: str) -> None:
        now = time.monotonic()
        for cid, state in list(self._open.get(rid, {}).items()):
            if state.status is not TargetStatus.ACCEPTED:
                self._send(rid, cid, state, now)

    # --- answers ------------------------------------------------------------------------------

    def on_ack(self, receiver_id: str, ack: Ack, at: datetime) -> None:
        self.counters.acks += 1
        targets = self._open.get(receiver_id)
        state = targets.get(ack.command_id) if targets else None
        if state is None:
            if ack.command_id in self._progress or ack.duplicate:
                self.counters.acks_late += 1
            else:
                self.counters.acks_unknown += 1
                log.info("acknowledgement from %s for unknown command %s", receiver_id, ack.command_id)
            return
        status = _ACK_STATUS[ack.status]
        if status is TargetStatus.ACCEPTED:
            if state.status is not TargetStatus.ACCEPTED:
                self._move(ack.command_id, state, status)
                self._update(ack.command_id, receiver_id, status=status.value, accepted_at=at)
            return
        self._finish(receiver_id, ack.command_id, state, status, ack.reason, at)

    def _finish(self, rid: str, cid: str, state: _Open, status: TargetStatus, reason: str | None, at: datetime) -> None:
        self._move(cid, state, status)
        self._update(cid, rid, status=status.value, reason=reason, finished_at=at)
        targets = self._open[rid]
        del targets[cid]
        if not targets:
            del self._open[rid]
        pending = self._commands.get(cid)
        if pending is not None:
            pending.receivers.discard(rid)
            if not pending.receivers:
                del self._commands[cid]

    def receiver_removed(self, receiver_id: str) -> None:
        """Revoked or retired: nothing it was sent can be carried out any more."""
        now = utcnow()
        for cid, state in list(self._open.get(receiver_id, {}).items()):
            self._finish(receiver_id, cid, state, TargetStatus.EXPIRED, "receiver_removed", now)

    # --- the live view ------------------------------------------------------------------------

    def _progress_of(self, cid: str) -> Counter[str]:
        progress = self._progress.get(cid)
        if progress is None:
            progress = self._progress[cid] = Counter()
            while len(self._progress) > PROGRESS_KEPT:
                self._progress.popitem(last=False)
        return progress

    def _move(self, cid: str, state: _Open, status: TargetStatus) -> None:
        progress = self._progress.get(cid)
        if progress is not None:
            progress[state.status.value] -= 1
            progress[status.value] += 1
        state.status = status

    def progress(self, command_id: str) -> dict[str, int] | None:
        """Targets by status, as of now (the database follows within WRITE_MAX_DELAY_S), for
        commands sent by this process; None for others."""
        progress = self._progress.get(command_id)
        return None if progress is None else {k: v for k, v in progress.items() if v}

    @property
    def open_targets(self) -> int:
        return sum(len(t) for t in self._open.values())

    # --- time ---------------------------------------------------------------------------------

    async def _sweeper(self) -> None:
        last_resend_scan = time.monotonic()
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = utcnow()
            while self._expiries and self._expiries[0][0] <= now:
                _, cid = heapq.heappop(self._expiries)
                pending = self._commands.get(cid)
                for rid in list(pending.receivers) if pending else ():
                    state = self._open[rid][cid]
                    reason = "no_answer" if state.status is TargetStatus.ACCEPTED else "not_delivered"
                    self.counters.expired += 1
                    self._finish(rid, cid, state, TargetStatus.EXPIRED, reason, now)
            mono = time.monotonic()
            if mono - last_resend_scan >= RESEND_AFTER_S / 6:
                last_resend_scan = mono
                self._resend_unanswered(mono)

    def _resend_unanswered(self, now: float) -> None:
        for rid, targets in list(self._open.items()):
            for cid, state in list(targets.items()):
                if state.status is TargetStatus.SENT and now - state.last_sent >= RESEND_AFTER_S \
                        and self._is_online(rid):
                    self._send(rid, cid, state, now)

    # --- the database -------------------------------------------------------------------------

    def _update(self, cid: str, rid: str, **values: Any) -> dict[str, Any]:
        key = (cid, rid)
        update = self._updates.get(key)
        if update is None:
            update = self._updates[key] = {"command_id": cid, "receiver_id": rid}
        update.update(values)
        self._updates_ready.set()
        return update

    async def _writer(self) -> None:
        delay = 1.0
        while True:
            await self._updates_ready.wait()
            first = time.monotonic()
            while True:
                self._updates_ready.clear()
                await asyncio.sleep(WRITE_QUIET_S)
                if not self._updates_ready.is_set() or time.monotonic() - first >= WRITE_MAX_DELAY_S:
                    break
            self._updates_ready.clear()
            while self._updates:
                self._idle.clear()
                keys = list(self._updates)[:WRITE_BATCH_MAX]
                batch = [self._updates.pop(k) for k in keys]
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception as exc:
                    self.counters.write_failures += 1
                    log.error("writing command outcomes failed (%s); %d wait, retrying in %.0f s",
                              exc.__class__.__name__, len(batch) + len(self._updates), delay)
                    for key, values in zip(keys, batch, strict=True):
                        newer = self._updates.pop(key, None)
                        self._updates[key] = values if newer is None else {**values, **newer}
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 1.0
            self._idle.set()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        # Bulk UPDATE by primary key needs every row to carry the same columns.
        by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
        for row in batch:
            by_columns.setdefault(frozenset(row), []).append(row)
        with session_scope(self._sessions) as session:
            for rows in by_columns.values():
                repository.apply_updates(session, rows)
