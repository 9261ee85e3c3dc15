"""Ledger queries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Select, Table, and_, bindparam, insert, or_, select, update
from sqlalchemy.orm import Session

from fleet_service.registry.models import Region, Station
from fleet_service.scope import RegionScope
from fleet_service.uptime.availability import Span
from fleet_service.uptime.models import Connectivity, ConnectivityInterval


# Ids per IN (...) list: well inside SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 500
# The ledger's table, for the writes done in Core (many rows per statement).
_INTERVALS = cast(Table, ConnectivityInterval.__table__)


class LedgerRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def open_interval_rows(self, receiver_ids: Iterable[str]) -> dict[str, tuple[int, str, datetime]]:
        """(id, state, start) of the open interval of each given receiver that has one."""
        ids = list(receiver_ids)
        found: dict[str, tuple[int, str, datetime]] = {}
        table = _INTERVALS
        for i in range(0, len(ids), _IN_CHUNK):
            rows = self.session.execute(
                select(table.c.receiver_id, table.c.id, table.c.state, table.c.start_at)
                .where(table.c.receiver_id.in_(ids[i:i + _IN_CHUNK]), table.c.end_at.is_(None)))
            for rid, interval_id, state, start_at in rows:
                found[rid] = (interval_id, state, start_at)
        return found

    def write_transitions(self, closes: Sequence[dict[str, object]], sessions: Mapping[int, int | None],
                          inserts: Sequence[dict[str, object]]) -> None:
        """Close intervals (``interval_id``, ``end_at``, ``end_cause``), set the session of open
        ones, and add new ones: each one statement for all its rows."""
        table = _INTERVALS
        if closes:
            self.session.execute(
                update(table).where(table.c.id == bindparam("interval_id"))
                .values(end_at=bindparam("end_at"), end_cause=bindparam("end_cause")), list(closes))
        if sessions:
            self.session.execute(
                update(table).where(table.c.id == bindparam("interval_id")).values(session=bindparam("new_session")),
                [{"interval_id": i, "new_session": s} for i, s in sessions.items()])
        if inserts:
            self.session.execute(insert(table), list(inserts))

    def open_intervals(self) -> Sequence[ConnectivityInterval]:
        return self.session.scalars(select(ConnectivityInterval).where(ConnectivityInterval.end_at.is_(None))).all()

    def add(self, interval: ConnectivityInterval) -> None:
        self.session.add(interval)

    def intervals_of_receiver(self, receiver_id: str, start: datetime, end: datetime) -> Sequence[ConnectivityInterval]:
        return self.session.scalars(
            _overlapping(select(ConnectivityInterval), start, end)
            .where(ConnectivityInterval.receiver_id == receiver_id)
            .order_by(ConnectivityInterval.start_at)
        ).all()

    def spans_of_receiver(self, receiver_id: str, start: datetime, end: datetime) -> list[Span]:
        return [_span(i) for i in self.intervals_of_receiver(receiver_id, start, end)]

    def spans_of_station(self, station_id: int, start: datetime, end: datetime) -> list[Span]:
        rows = self.session.scalars(
            _overlapping(select(ConnectivityInterval), start, end).where(ConnectivityInterval.station_id == station_id)
        ).all()
        return [_span(i) for i in rows]

    def spans_of_region(self, region_path: str, start: datetime, end: datetime) -> list[Span]:
        rows = self.session.scalars(
            _overlapping(select(ConnectivityInterval), start, end)
            .join(Station, Station.id == ConnectivityInterval.station_id)
            .join(Region, Region.id == Station.region_id)
            .where(RegionScope(region_path).regions())
        ).all()
        return [_span(i) for i in rows]


def _overlapping(query: Select, start: datetime, end: datetime) -> Select:  # type: ignore[type-arg]
    return query.where(
        ConnectivityInterval.start_at < end,
        or_(ConnectivityInterval.end_at.is_(None), and_(ConnectivityInterval.end_at > start)),
    )


def _span(interval: ConnectivityInterval) -> Span:
    return Span(interval.receiver_id, Connectivity(interval.state), interval.start_at, interval.end_at)

