"""The uptime ledger: writes transitions as intervals, answers availability questions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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

    One query reads the open intervals of the whole batch and one flush writes it: a reconnect
    storm of thousands of births must reach the ledger in seconds, not minutes."""
    batch = list(transitions)
    repository = LedgerRepository(session)
    open_now = repository.open_intervals_of({t.receiver_id for t in batch})
    opened = 0
    for transition in batch:
        current = open_now.get(transition.receiver_id)
        at = transition.at
        if current is not None:
            if current.state == transition.state.value:
                current.session = transition.session  # e.g. a new session with no outage between
                continue
            # Intervals never overlap, even if a transition is stamped before the open one began
            # (e.g. a silence measured from a last message older than a reconciled birth).
            at = max(at, current.start_at)
            current.end_at = at
            current.end_cause = transition.cause.value
        interval = ConnectivityInterval(
            receiver_id=transition.receiver_id,
            station_id=station_of.get(transition.receiver_id),
            state=transition.state.value,
            session=transition.session,
            start_at=at,
            start_cause=transition.cause.value,
        )
        repository.add(interval)
        open_now[transition.receiver_id] = interval
        opened += 1
    session.flush()
    return opened


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
