"""Availability and connectivity history, from the uptime ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from fleet_service.auth.dependencies import CurrentPrincipal
from fleet_service.db import RowId, utcnow
from fleet_service.deps import SessionDep
from fleet_service.registry import service as registry
from fleet_service.timefmt import period
from fleet_service.uptime import service
from fleet_service.uptime.repository import LedgerRepository
from fleet_service.uptime.schemas import AvailabilityOut, IntervalOut

router = APIRouter(tags=["uptime"])

StartQuery = Annotated[datetime | None, Query(description="Start; ISO 8601. No zone = Asia/Ho_Chi_Minh. Default: 24 h before end.")]
EndQuery = Annotated[datetime | None, Query(description="End; ISO 8601. No zone = Asia/Ho_Chi_Minh. Default: now.")]


def _measured(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime, datetime]:
    """(start, end, now) in UTC, with now taken once: the default end and whether an outage is
    still under way are then judged at the same instant."""
    now = utcnow()
    lo, hi = period(start, end if end is not None else now)
    return lo, hi, now


@router.get("/receivers/{receiver_id}/availability", response_model=AvailabilityOut)
def receiver_availability(receiver_id: str, session: SessionDep, principal: CurrentPrincipal,
                          start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    # Out of scope answers exactly like absent (404): an operator learns nothing of other communes.
    registry.get_receiver(session, receiver_id, scope=principal.region_path)
    lo, hi, now = _measured(start, end)
    result = service.receiver_availability(session, receiver_id, lo, hi, now=now)
    return AvailabilityOut.build("receiver", receiver_id, result)


@router.get("/receivers/{receiver_id}/connectivity", response_model=list[IntervalOut])
def receiver_connectivity(receiver_id: str, session: SessionDep, principal: CurrentPrincipal,
                          start: StartQuery = None, end: EndQuery = None) -> list[IntervalOut]:
    """The ledger's intervals for one receiver (the connectivity timeline)."""
    registry.get_receiver(session, receiver_id, scope=principal.region_path)
    rows = LedgerRepository(session).intervals_of_receiver(receiver_id, *period(start, end))
    return [IntervalOut(state=r.state, session=r.session, start=r.start_at, end=r.end_at, start_cause=r.start_cause,
                        end_cause=r.end_cause, station_id=r.station_id) for r in rows]


@router.get("/stations/{station_id}/availability", response_model=AvailabilityOut)
def station_availability(station_id: RowId, session: SessionDep, principal: CurrentPrincipal,
                         start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    registry.get_station(session, station_id, scope=principal.region_path)
    lo, hi, now = _measured(start, end)
    result = service.station_availability(session, station_id, lo, hi, now=now)
    return AvailabilityOut.build("station", str(station_id), result)


@router.get("/regions/{region_id}/availability", response_model=AvailabilityOut)
def region_availability(region_id: RowId, session: SessionDep, principal: CurrentPrincipal,
                        start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    region = registry.get_region(session, region_id, scope=principal.region_path)
    lo, hi, now = _measured(start, end)
    result = service.region_availability(session, region.path, lo, hi, now=now)
    return AvailabilityOut.build("region", str(region_id), result)
