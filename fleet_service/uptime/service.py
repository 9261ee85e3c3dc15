"""The uptime ledger: writes transitions as intervals, answers availability questions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from fleet_service.db import utcnow
from fleet_service.errors import Invalid
from fleet_service.uptime import availability_sql
from fleet_service.uptime.availability import Availability
from fleet_service.uptime.availability_sql import Period
from fleet_service.uptime.models import ConnectivityInterval
from fleet_service.uptime.repository import LedgerRepository
from fleet_service.uptime.tracker import Transition


def record_transitions(session: Session, transitions: Iterable[Transition], station_of: Mapping[str, int | None]) -> int:
    """Close each receiver's open interval at the transition's time and open the next one.
    Returns how many intervals were opened. A transition to the state already open is a no-op,
    so replaying the same transitions after a failed commit is harmless.

    One query reads the open intervals of the whole batch, and the closes, the new intervals and
    the new sessions go as three statements of many rows each (Core, not ORM objects: a
    reconnect storm of 10,000 births must reach the ledger in seconds, and the ORM's unit of
    work cost a fifth of a millisecond per transition)."""
    batch = list(transitions)
    open_now: dict[str, _Open] = {
        rid: _Open(interval_id, state, start_at)
        for rid, (interval_id, state, start_at) in LedgerRepository(session).open_interval_rows(
            {t.receiver_id for t in batch}).items()
    }
    closes: list[dict[str, object]] = []
    sessions: dict[int, int | None] = {}
    inserts: list[dict[str, object]] = []
    for transition in batch:
        rid = transition.receiver_id
        current = open_now.get(rid)
        at = transition.at
        if current is not None:
            if current.state == transition.state.value:
                # e.g. a new session with no outage between
                if current.insert is not None:
                    current.insert["session"] = transition.session
                else:
                    sessions[current.interval_id] = transition.session
                continue
            # Intervals never overlap, even if a transition is stamped before the open one began
            # (e.g. a silence measured from a last message older than a reconciled birth).
            at = max(at, current.start_at)
            if current.insert is not None:  # opened earlier in this batch: closed before it is written
                current.insert["end_at"], current.insert["end_cause"] = at, transition.cause.value
            else:
                closes.append({"interval_id": current.interval_id, "end_at": at, "end_cause": transition.cause.value})
        row: dict[str, object] = {"receiver_id": rid, "station_id": station_of.get(rid),
                                  "state": transition.state.value, "session": transition.session, "start_at": at,
                                  "end_at": None, "start_cause": transition.cause.value, "end_cause": None}
        inserts.append(row)
        open_now[rid] = _Open(0, transition.state.value, at, row)
    LedgerRepository(session).write_transitions(closes, sessions, inserts)
    return len(inserts)


@dataclass(slots=True)
class _Open:
    """A receiver's open interval while a batch is recorded: in the database (``interval_id``)
    or opened by this batch (``insert``, its row still to be written)."""

    interval_id: int
    state: str
    start_at: datetime
    insert: dict[str, object] | None = None


def _period(start: datetime, end: datetime | None, now: datetime | None) -> Period:
    """One "now" for the whole answer: an end left to default and the test of whether an outage
    is still under way must see the same instant, or an open outage reads as ended."""
    now = now or utcnow()
    end = end or now
    if start.tzinfo is None or end.tzinfo is None or now.tzinfo is None:
        raise Invalid("Thời điểm phải có múi giờ", "times must carry a time zone")
    if end <= start:
        raise Invalid("Thời điểm kết thúc phải sau thời điểm bắt đầu", "the period must end after it starts")
    return Period(start, end, now)


# Availability is computed by the database, from the one definition in availability_sql.py that
# Grafana's panels also call (docs/uptime.md).

def receiver_availability(session: Session, receiver_id: str, start: datetime, end: datetime | None, *,
                          now: datetime | None = None) -> Availability:
    """``end`` None: up to ``now``. Give ``now`` when the caller took it already (to default
    the end of the period itself), so that both are the same instant."""
    return availability_sql.availability(session, _period(start, end, now), receiver_id=receiver_id)


def station_availability(session: Session, station_id: int, start: datetime, end: datetime | None, *,
                         now: datetime | None = None) -> Availability:
    return availability_sql.availability(session, _period(start, end, now), station_id=station_id)


def region_availability(session: Session, region_path: str, start: datetime, end: datetime | None, *,
                        now: datetime | None = None) -> Availability:
    return availability_sql.availability(session, _period(start, end, now), region_path=region_path)
