"""Regions, stations and receivers. Reads are open to every role within its subtree; regions
are managed by admins; stations and receivers by technicians (and admins) within theirs.
Whatever lies outside the caller's subtree answers 404, as if it did not exist."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response

from fleet_service.auth.dependencies import AdminPrincipal, CurrentPrincipal, TechnicianPrincipal
from fleet_service.db import RowId
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.outbox.service import SideEffectPending, follow_commit
from fleet_service.registry import service
from fleet_service.registry.models import ReceiverStatus
from fleet_service.registry.schemas import (
    AssignmentOut,
    ProvisionedCredential,
    ReceiverCreate,
    ReceiverOut,
    ReceiverUpdate,
    RegionCreate,
    RegionMove,
    RegionOut,
    RegionUpdate,
    ReplaceRequest,
    ReplaceResult,
    StationCreate,
    StationOut,
    StationUpdate,
)



def _registry_changes(request: Request, runtime: RuntimeDep) -> Iterator[None]:
    """After a change (set up before the request's session, so this runs after its commit): in
    the leading worker's own process, the outbox applies its side effects (telemetry tags,
    schedules) at once; elsewhere the leader finds them within about a second."""
    yield
    if request.method != "GET" and runtime.outbox is not None:
        runtime.outbox.wake()


router = APIRouter(dependencies=[Depends(_registry_changes)])


# --- regions -----------------------------------------------------------------------------

@router.get("/regions", response_model=list[RegionOut], tags=["regions"])
def list_regions(session: SessionDep, principal: CurrentPrincipal, root_id: RowId | None = None) -> list[RegionOut]:
    """The regions the caller may see, depth first; ``root_id`` limits it to one subtree."""
    regions = service.list_regions(session, root_id=root_id, scope=principal.scope)
    return [RegionOut.model_validate(r) for r in regions]


@router.post("/regions", response_model=RegionOut, status_code=201, tags=["regions"])
def create_region(data: RegionCreate, session: SessionDep, principal: AdminPrincipal) -> RegionOut:
    return RegionOut.model_validate(service.create_region(session, data, scope=principal.scope))


@router.get("/regions/{region_id}", response_model=RegionOut, tags=["regions"])
def get_region(region_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> RegionOut:
    return RegionOut.model_validate(service.get_region(session, region_id, scope=principal.scope))


@router.patch("/regions/{region_id}", response_model=RegionOut, tags=["regions"])
def update_region(region_id: RowId, data: RegionUpdate, session: SessionDep, principal: AdminPrincipal) -> RegionOut:
    return RegionOut.model_validate(service.update_region(session, region_id, data, scope=principal.scope))


@router.post("/regions/{region_id}/move", response_model=RegionOut, tags=["regions"])
def move_region(region_id: RowId, data: RegionMove, session: SessionDep, principal: AdminPrincipal) -> RegionOut:
    region = service.move_region(session, region_id, data.parent_id, scope=principal.scope)
    return RegionOut.model_validate(region)


@router.delete("/regions/{region_id}", status_code=204, tags=["regions"])
def delete_region(region_id: RowId, session: SessionDep, principal: AdminPrincipal) -> None:
    service.delete_region(session, region_id, scope=principal.scope)


# --- stations ----------------------------------------------------------------------------

@router.get("/stations", response_model=list[StationOut], tags=["stations"])
def list_stations(session: SessionDep, principal: CurrentPrincipal, region_id: RowId | None = None) -> list[StationOut]:
    """Stations the caller may see; ``region_id`` limits it to that region's subtree."""
    stations = service.list_stations(session, region_id=region_id, scope=principal.scope)
    return [StationOut.model_validate(s) for s in stations]


@router.post("/stations", response_model=StationOut, status_code=201, tags=["stations"])
def create_station(data: StationCreate, session: SessionDep, principal: TechnicianPrincipal) -> StationOut:
    return StationOut.model_validate(service.create_station(session, data, scope=principal.scope))


@router.get("/stations/{station_id}", response_model=StationOut, tags=["stations"])
def get_station(station_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> StationOut:
    return StationOut.model_validate(service.get_station(session, station_id, scope=principal.scope))


@router.patch("/stations/{station_id}", response_model=StationOut, tags=["stations"])
def update_station(station_id: RowId, data: StationUpdate, session: SessionDep, principal: TechnicianPrincipal) -> StationOut:
    return StationOut.model_validate(service.update_station(session, station_id, data, scope=principal.scope))


@router.delete("/stations/{station_id}", status_code=204, tags=["stations"])
def delete_station(station_id: RowId, session: SessionDep, principal: TechnicianPrincipal) -> None:
    service.delete_station(session, station_id, scope=principal.scope)


@router.get("/stations/{station_id}/history", response_model=list[AssignmentOut], tags=["stations"])
def station_history(station_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> list[AssignmentOut]:
    """Which receiver served the station, from when to when (oldest first)."""
    history = service.station_history(session, station_id, scope=principal.scope)
    return [AssignmentOut.model_validate(a) for a in history]


@router.post("/stations/{station_id}/replace", response_model=ReplaceResult, tags=["stations", "receivers"])
def replace_receiver(
    station_id: RowId, data: ReplaceRequest, session: SessionDep, runtime: RuntimeDep, principal: TechnicianPrincipal
) -> ReplaceResult:
    """Retire a station's receiver and register its successor; then provision the new one."""
    old, new = service.replace_receiver(
        session, station_id, data.old_receiver_id, data.new, note=data.note, scope=principal.scope
    )
    result = ReplaceResult(retired=ReceiverOut.model_validate(old), new=ReceiverOut.model_validate(new))
    session.commit()
    follow_commit(session, runtime.sessions, runtime.outbox)
    return result


# --- receivers ---------------------------------------------------------------------------

@router.get("/receivers", response_model=list[ReceiverOut], tags=["receivers"])
def list_receivers(
    session: SessionDep,
    principal: CurrentPrincipal,
    station_id: RowId | None = None,
    region_id: RowId | None = None,
    status: ReceiverStatus | None = None,
) -> list[ReceiverOut]:
    receivers = service.list_receivers(
        session, station_id=station_id, region_id=region_id, status=status, scope=principal.scope
    )
    return [ReceiverOut.model_validate(r) for r in receivers]


@router.post("/receivers", response_model=ReceiverOut, status_code=201, tags=["receivers"])
def register_receiver(data: ReceiverCreate, session: SessionDep, principal: TechnicianPrincipal) -> ReceiverOut:
    """Register a receiver; it cannot log in until it is provisioned."""
    return ReceiverOut.model_validate(service.register_receiver(session, data, scope=principal.scope))


@router.get("/receivers/{receiver_id}", response_model=ReceiverOut, tags=["receivers"])
def get_receiver(receiver_id: str, session: SessionDep, principal: CurrentPrincipal) -> ReceiverOut:
    return ReceiverOut.model_validate(service.get_receiver(session, receiver_id, scope=principal.scope))


@router.patch("/receivers/{receiver_id}", response_model=ReceiverOut, tags=["receivers"])
def update_receiver(
    receiver_id: str, data: ReceiverUpdate, session: SessionDep, principal: TechnicianPrincipal
) -> ReceiverOut:
    return ReceiverOut.model_validate(service.update_receiver(session, receiver_id, data, scope=principal.scope))


@router.post("/receivers/{receiver_id}/provision", response_model=ProvisionedCredential, status_code=201,
             tags=["receivers"])
def provision_receiver(
    receiver_id: str, response: Response, session: SessionDep, runtime: RuntimeDep, principal: TechnicianPrincipal
) -> ProvisionedCredential:
    """A new MQTT password, in this answer only (earlier passwords stop working)."""
    credential = service.provision(session, receiver_id, scope=principal.scope)
    session.commit()
    response.headers["Cache-Control"] = "no-store"
    try:
        follow_commit(session, runtime.sessions, runtime.outbox)
    except SideEffectPending as pending:
        # The password is shown all the same: it is saved, and the broker takes it when it can.
        credential = credential.model_copy(update={
            "broker_applied": False, "note": f"{pending.message_vi} / {pending.message_en}"})
    return credential


@router.post("/receivers/{receiver_id}/revoke", response_model=ReceiverOut, tags=["receivers"])
def revoke_receiver(
    receiver_id: str, session: SessionDep, runtime: RuntimeDep, principal: TechnicianPrincipal
) -> ReceiverOut:
    """Withdraw the receiver's credentials and disconnect it now."""
    receiver = ReceiverOut.model_validate(service.revoke(session, receiver_id, scope=principal.scope))
    session.commit()
    follow_commit(session, runtime.sessions, runtime.outbox)
    return receiver
