"""What ingest needs from the database: which receivers exist, the ledger's open intervals, and
the live state it keeps for other processes and for its own restart."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Insert, Table, select
from sqlalchemy.orm import Session

from fleet_service.db import upsert
from fleet_service.registry.models import Receiver, ReceiverStatus
from fleet_service.scope import RegionScope
from fleet_service.uptime.models import ConnectivityInterval, ReceiverLiveState
from fleet_service.uptime.repository import LedgerRepository


class IngestRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def active_receivers(self, among: Sequence[str] | None = None) -> dict[str, int | None]:
        """Each active receiver's station: all of them, or those ``among`` the given ids."""
        query = select(Receiver.id, Receiver.station_id).where(Receiver.status == ReceiverStatus.ACTIVE.value)
        if among is None:
            return {rid: station for rid, station in self.session.execute(query)}
        found: dict[str, int | None] = {}
        for start in range(0, len(among), 1000):  # bounded IN lists
            chunk = among[start:start + 1000]
            found.update({rid: station for rid, station in self.session.execute(query.where(Receiver.id.in_(chunk)))})
        return found

    def active_receiver(self, receiver_id: str) -> tuple[int | None] | None:
        row = self.session.execute(
            select(Receiver.station_id).where(Receiver.id == receiver_id,
                                              Receiver.status == ReceiverStatus.ACTIVE.value)
        ).first()
        return None if row is None else (row[0],)

    def open_intervals(self) -> Sequence[ConnectivityInterval]:
        return LedgerRepository(self.session).open_intervals()

    def heard_at(self) -> dict[str, tuple[int | None, datetime | None]]:
        """Each receiver's session and the last time it was really heard, from the live state."""
        rows = self.session.execute(select(ReceiverLiveState.receiver_id, ReceiverLiveState.session,
                                           ReceiverLiveState.heard_at))
        return {rid: (session, heard) for rid, session, heard in rows}

    def write_live_state(self, rows: Sequence[LiveStateRow]) -> None:
        """Insert or update the rows: one Core statement, executed for the whole batch by the
        driver (the ORM's bulk path cost four times as much per row, measured with py-spy in a
        connect storm)."""
        if not rows:
            return
        # A shallow dict per row: dataclasses.asdict deep-copies the play status (measured: a
        # third of the write's time in a connect storm).
        self.session.connection().execute(_live_state_upsert(self.session.get_bind().dialect.name),
                                          [{name: getattr(row, name) for name in LIVE_STATE_FIELDS} for row in rows])


@dataclass(slots=True)
class LiveStateRow:
    receiver_id: str
    online: bool
    session: int | None
    heard_at: datetime | None
    updated_at: datetime
    telemetry_at: datetime | None = None
    signal_dbm: int | None = None
    temperature_c: float | None = None
    supply_v: float | None = None
    amplifier: str | None = None
    stream: str | None = None
    firmware: str | None = None
    clock_skew_s: float | None = None
    schedule_version: int | None = None
    playing: dict[str, Any] | None = None
    hardware: str | None = None


LIVE_STATE_FIELDS = tuple(LiveStateRow.__dataclass_fields__)
LIVE_STATE_COLUMNS = tuple(name for name in LIVE_STATE_FIELDS if name != "receiver_id")


@functools.cache
def _live_state_upsert(dialect: str) -> Insert:
    """INSERT … ON CONFLICT (receiver_id) DO UPDATE, built once per dialect (its compiled form is
    then cached by SQLAlchemy)."""
    return upsert(dialect, cast(Table, ReceiverLiveState.__table__), ("receiver_id",),
                  lambda _stored, new: {name: new[name] for name in LIVE_STATE_COLUMNS})


def receivers_with_open_interval(session: Session, region_path: str | None) -> Sequence[tuple[Any, ...]]:
    """Every active receiver in a subtree (all if None): id, station id and name, the ledger's
    open interval's state and start (None if it was never seen), and its live state's columns
    (None before the leading worker first wrote it). Columns, not ORM objects: the live view
    of a whole province is tens of thousands of rows, read every few seconds."""
    from sqlalchemy import and_

    from fleet_service.registry.models import Station

    live = ReceiverLiveState
    query = (
        select(Receiver.id, Station.id, Station.name, ConnectivityInterval.state, ConnectivityInterval.start_at,
               live.online, live.heard_at, live.signal_dbm, live.temperature_c, live.supply_v, live.amplifier,
               live.stream, live.firmware, live.clock_skew_s, live.playing)
        .select_from(Receiver)
        .outerjoin(Station, Station.id == Receiver.station_id)
        .outerjoin(ConnectivityInterval, and_(ConnectivityInterval.receiver_id == Receiver.id,
                                              ConnectivityInterval.end_at.is_(None)))
        .outerjoin(live, live.receiver_id == Receiver.id)
        .where(Receiver.status == ReceiverStatus.ACTIVE.value, RegionScope(region_path).receivers())
        .order_by(Receiver.id)
    )
    return [tuple(row) for row in session.execute(query)]
