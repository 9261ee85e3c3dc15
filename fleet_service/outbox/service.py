"""Recording side effects with the change that calls for them, and following them after the
commit. Nothing here commits."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope, utcnow
from fleet_service.errors import Unavailable
from fleet_service.outbox import repository as repo
from fleet_service.outbox.models import OutboxEntry
from fleet_service.worker.service import current_leader

# session.info key listing the entries recorded in this unit of work.
_RECORDED = "loa.outbox"


class OutboxKind(StrEnum):
    # A receiver's MQTT password was set or replaced: the broker takes it, and a session that
    # logged in with an earlier one is dropped.
    RECEIVER_LOGIN_SET = "receiver_login_set"
    # A receiver's credentials were withdrawn (revoked, retired): no more logins, the live
    # session is dropped.
    RECEIVER_LOGIN_REMOVED = "receiver_login_removed"
    # A command was recorded (by any API process, or a schedule change): the leading worker
    # delivers it.
    COMMAND_CREATED = "command_created"
    # Receivers changed place: a region renamed or moved, a station moved or renamed, a
    # receiver registered or put on another station. Subject: "region:<id>", "station:<id>" or
    # "receiver:<id>". The leading worker re-tags their telemetry, records their next ledger
    # intervals under their new station, and brings their schedules up to date.
    REGISTRY_CHANGED = "registry_changed"
    # A firmware release was withdrawn. Subject: "release:<id>". Rollouts (not written yet)
    # will stop offering it; until then the leading worker has nothing to do.
    FIRMWARE_RELEASE_WITHDRAWN = "firmware_release_withdrawn"


def record(session: Session, kind: OutboxKind, subject: str, payload: dict[str, Any] | None = None) -> OutboxEntry:
    now = utcnow()
    entry = repo.add(session, OutboxEntry(kind=kind.value, subject=subject, payload=json.dumps(payload or {}),
                                          created_at=now, available_at=now, attempts=0))
    session.info.setdefault(_RECORDED, []).append(entry.id)
    return entry


def recorded(session: Session) -> list[int]:
    """The entries this unit of work recorded (after its commit: the ones to follow)."""
    return list(session.info.get(_RECORDED, ()))


def receiver_login_set(session: Session, receiver_id: str, password: str) -> OutboxEntry:
    return record(session, OutboxKind.RECEIVER_LOGIN_SET, receiver_id, {"password": password})


def receiver_login_removed(session: Session, receiver_id: str) -> OutboxEntry:
    return record(session, OutboxKind.RECEIVER_LOGIN_REMOVED, receiver_id)


# session.info key: the registry subjects already recorded in this unit of work.
_REGISTRY_SUBJECTS = "loa.outbox.registry"


def registry_changed(session: Session, subject: str) -> None:
    """Once per subject and unit of work (an import of a thousand receivers onto one station
    records one entry per receiver, not per field)."""
    seen: set[str] = session.info.setdefault(_REGISTRY_SUBJECTS, set())
    if subject not in seen:
        seen.add(subject)
        record(session, OutboxKind.REGISTRY_CHANGED, subject)


@dataclass(frozen=True)
class Progress:
    """Where entries stand: all applied, or what holds them back."""

    applied: bool
    worker_alive: bool
    errors: tuple[str, ...] = ()


def progress(sessions: sessionmaker[Session], ids: Sequence[int]) -> Progress:
    with session_scope(sessions) as session:
        entries = repo.get_many(session, ids)
        alive = current_leader(session) is not None
        errors = tuple(e.last_error for e in entries if e.done_at is None and e.last_error)
        return Progress(all(e.done_at is not None for e in entries), alive, errors)


def wait_applied(sessions: sessionmaker[Session], ids: Sequence[int], *, timeout: float,
                 poll_s: float = 0.1) -> Progress:
    """For a process that does not apply the outbox itself (the CLI, an API process): wait,
    while a worker is alive, until it has applied ``ids`` or an attempt failed (it is
    retried); give up at once when no worker is alive."""
    deadline = time.monotonic() + timeout
    while True:
        state = progress(sessions, ids)
        if state.applied or not state.worker_alive or state.errors or time.monotonic() >= deadline:
            return state
        time.sleep(poll_s)


# How long a request waits for its side effects (a broker login) before answering.
FOLLOW_TIMEOUT_S = 10.0

if TYPE_CHECKING:
    from fleet_service.outbox.dispatcher import OutboxDispatcher


class SideEffectPending(Unavailable):
    """The change is saved, its side effect is not applied yet; it is retried by itself."""


def follow_commit(session: Session, sessions: sessionmaker[Session], dispatcher: OutboxDispatcher | None, *,
                  timeout: float = FOLLOW_TIMEOUT_S) -> None:
    """After a request's commit: wait until what it recorded is applied, so that its answer
    means it took effect (a revoked receiver is off the broker). In the leading worker's own
    process the dispatcher is woken at once; elsewhere (an API process) the leader finds the
    entries within about a second. With no worker alive there is nobody to wait for: the
    change is applied when one starts."""
    ids = recorded(session)
    if not ids:
        return
    if dispatcher is not None:
        state = dispatcher.apply_now(ids, timeout)
    else:
        state = wait_applied(sessions, ids, timeout=timeout)
        if not state.worker_alive:
            return
    if not state.applied:
        detail = "; ".join(state.errors) or "timed out"
        raise SideEffectPending(
            "Đã lưu, nhưng broker MQTT chưa cập nhật được; dịch vụ sẽ tự thử lại cho đến khi được",
            f"Saved, but the MQTT broker could not be updated yet ({detail}); the service keeps retrying",
        )
