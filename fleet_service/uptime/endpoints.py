"""Availability and connectivity history, from the uptime ledger."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from fleet_service.auth.dependencies import CurrentPrincipal, Principal
from fleet_service.deps import SessionDep
from fleet_service.errors import NotFound
from fleet_service.timefmt import as_utc
from fleet_service.uptime import service
from fleet_service.uptime.repository import LedgerRepository, ScopeRepository
from fleet_service.uptime.schemas import AvailabilityOut, IntervalOut

router = APIRouter(tags=["uptime"])

StartQuery = Annotated[datetime | None, Query(description="Start; ISO 8601. No zone = Asia/Ho_Chi_Minh. Default: 24 h before end.")]
EndQuery = Annotated[datetime | None, Query(description="End; ISO 8601. No zone = Asia/Ho_Chi_Minh. Default: now.")]


def _period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime | None]:
    end_utc = as_utc(end) if end else None
    start_utc = as_utc(start) if start else (end_utc or datetime.now().astimezone()) - timedelta(days=1)
    return as_utc(start_utc), end_utc


def _not_found(what_vi: str, what_en: str) -> NotFound:
    return NotFound(f"Không tìm thấy {what_vi}", f"{what_en} not found")


def check_receiver(session: SessionDep, principal: Principal, receiver_id: str) -> None:
    exists, path = ScopeRepository(session).receiver_region_path(receiver_id)
    # Out of scope looks exactly like absent: an operator learns nothing of other communes.
    if not exists or not (principal.region_path is None or (path is not None and principal.can_access_path(path))):
        raise _not_found(f"thiết bị thu {receiver_id}", f"receiver {receiver_id}")


@router.get("/receivers/{receiver_id}/availability", response_model=AvailabilityOut)
def receiver_availability(receiver_id: str, session: SessionDep, principal: CurrentPrincipal,
                          start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    check_receiver(session, principal, receiver_id)
    result = service.receiver_availability(session, receiver_id, *_period(start, end))
    return AvailabilityOut.build("receiver", receiver_id, result)


@router.get("/receivers/{receiver_id}/connectivity", response_model=list[IntervalOut])
def receiver_connectivity(receiver_id: str, session: SessionDep, principal: CurrentPrincipal,
                          start: StartQuery = None, end: EndQuery = None) -> list[IntervalOut]:
    """The ledger's intervals for one receiver (the connectivity timeline)."""
    check_receiver(session, principal, receiver_id)
    lo, hi = _period(start, end)
    rows = LedgerRepository(session).intervals_of_receiver(receiver_id, lo, hi or datetime.now().astimezone())
    return [IntervalOut(state=r.state, session=r.session, start=r.start_at, end=r.end_at, start_cause=r.start_cause,
                        end_cause=r.end_cause, station_id=r.station_id) for r in rows]


@router.get("/stations/{station_id}/availability", response_model=AvailabilityOut)
def station_availability(station_id: int, session: SessionDep, principal: CurrentPrincipal,
                         start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    path = ScopeRepository(session).station_region_path(station_id)
    if path is None or not principal.can_access_path(path):
        raise _not_found(f"đài {station_id}", f"station {station_id}")
    result = service.station_availability(session, station_id, *_period(start, end))
    return AvailabilityOut.build("station", str(station_id), result)


@router.get("/regions/{region_id}/availability", response_model=AvailabilityOut)
def region_availability(region_id: int, session: SessionDep, principal: CurrentPrincipal,
                        start: StartQuery = None, end: EndQuery = None) -> AvailabilityOut:
    path = ScopeRepository(session).region_path(region_id)
    if path is None or not principal.can_access_path(path):
        raise _not_found(f"đơn vị {region_id}", f"region {region_id}")
    result = service.region_availability(session, path, *_period(start, end))
    return AvailabilityOut.build("region", str(region_id), result)
