"""Schedules API."""

from __future__ import annotations

from fastapi import APIRouter, status

from fleet_service.auth.dependencies import CurrentPrincipal
from fleet_service.commands.endpoints import deliver_now, issuer_of
from fleet_service.commands.service import Created
from fleet_service.db import RowId
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.registry import service as registry
from fleet_service.runtime import Runtime
from fleet_service.schedules import repository, service
from fleet_service.schedules.schemas import ReceiverScheduleOut, ScheduleCreate, ScheduleOut, SlotsReplace
from fleet_service.uptime.models import ReceiverLiveState

router = APIRouter(tags=["schedules"])


def _submit(runtime: Runtime, created: list[Created]) -> None:
    deliver_now(runtime, created)


@router.post("/schedules", response_model=ScheduleOut, status_code=status.HTTP_201_CREATED)
def create_schedule(data: ScheduleCreate, session: SessionDep, runtime: RuntimeDep, principal: CurrentPrincipal) -> ScheduleOut:
    """Tạo lịch phát / create a schedule for a station or a region subtree; the receivers it
    reaches are sent their new schedule at once (or when they next connect)."""
    schedule, created = service.create_schedule(session, data, issuer_of(principal))
    session.commit()
    _submit(runtime, created)
    return service.schedule_out(schedule, created)


@router.get("/schedules", response_model=list[ScheduleOut])
def list_schedules(session: SessionDep, principal: CurrentPrincipal) -> list[ScheduleOut]:
    return [service.schedule_out(s) for s in repository.list_schedules(session, principal.scope)]


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut)
def get_schedule(schedule_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> ScheduleOut:
    return service.schedule_out(service.get_schedule(session, schedule_id, scope=principal.scope))


@router.put("/schedules/{schedule_id}/slots", response_model=ScheduleOut)
def replace_slots(schedule_id: RowId, data: SlotsReplace, session: SessionDep, runtime: RuntimeDep,
                  principal: CurrentPrincipal) -> ScheduleOut:
    schedule, created = service.replace_slots(session, schedule_id, data.slots, issuer_of(principal))
    session.commit()
    _submit(runtime, created)
    return service.schedule_out(schedule, created)


@router.delete("/schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_schedule(schedule_id: RowId, session: SessionDep, runtime: RuntimeDep, principal: CurrentPrincipal) -> None:
    created = service.delete_schedule(session, schedule_id, issuer_of(principal))
    session.commit()
    _submit(runtime, created)


@router.get("/receivers/{receiver_id}/schedule", response_model=ReceiverScheduleOut)
def receiver_schedule(receiver_id: str, session: SessionDep, principal: CurrentPrincipal) -> ReceiverScheduleOut:
    """The schedule a receiver should hold, and whether it reports holding it."""
    registry.get_receiver(session, receiver_id, scope=principal.scope)
    expected = service.expected_of(session, receiver_id)
    # What the receiver last reported holding, from the live state the leading worker writes.
    live = session.get(ReceiverLiveState, receiver_id)
    held = live.schedule_version if live is not None else None
    return ReceiverScheduleOut(
        receiver_id=receiver_id, expected_version=expected.version if expected else None, held_version=held,
        in_step=expected is not None and held == expected.version,
        command_id=expected.command_id if expected else None,
        slots=service.slots_of_command(session, expected.command_id) if expected else [])
