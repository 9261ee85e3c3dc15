"""Rollouts API: create, list, follow, pause, resume, abort, retry the failed. Engineers
(technicians) and admins act on rollouts; anyone signed in reads those that reach their region.
The leading worker drives them (rollouts.driver); these endpoints only record what people
decide."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status

from fleet_service.audit.middleware import TARGET_STATE
from fleet_service.auth.dependencies import CurrentPrincipal, Principal, require_roles
from fleet_service.auth.models import Role
from fleet_service.db import ID_MAX, RowId
from fleet_service.deps import SessionDep
from fleet_service.rollouts import repository, service
from fleet_service.rollouts.models import RolloutState, TargetState
from fleet_service.rollouts.plan import MAX_WAVES
from fleet_service.rollouts.schemas import ReasonIn, RetryOut, RolloutCreate, RolloutOut, TargetOut

router = APIRouter(tags=["rollouts"])

EngineerPrincipal = Annotated[Principal, Depends(require_roles(Role.TECHNICIAN))]


def _actor(principal: Principal) -> service.Actor:
    return service.Actor(principal.user_id, principal.username, principal.scope)


@router.post("/rollouts", response_model=RolloutOut, status_code=status.HTTP_201_CREATED)
def create_rollout(data: RolloutCreate, request: Request, session: SessionDep,
                   principal: EngineerPrincipal) -> RolloutOut:
    """Tạo đợt cập nhật / create a rollout of a release to receivers of the caller's region:
    planned in waves (a canary first), offered by the leading worker inside the maintenance
    window and at the pace given. Receivers that run it already, or may not take it, are
    skipped with the reason."""
    rollout = service.create_rollout(session, data, _actor(principal))
    out = service.rollout_out(session, rollout)
    setattr(request.state, TARGET_STATE, f"rollout_id={rollout.id}, release_id={out.release_id}, "
                                         f"version={out.version}, hardware={out.hardware}")
    return out


@router.get("/rollouts", response_model=list[RolloutOut])
def list_rollouts(
    session: SessionDep, principal: CurrentPrincipal,
    state: Annotated[list[RolloutState] | None, Query(description="only rollouts in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[RolloutOut]:
    """Các đợt cập nhật / rollouts, newest first: those with at least one receiver in the
    caller's region (the progress is the whole rollout's: its waves are judged whole)."""
    rows = repository.list_rollouts(session, principal.scope, states=[s.value for s in state or []],
                                    limit=limit, offset=offset)
    return [service.rollout_out(session, r) for r in rows]


@router.get("/rollouts/{rollout_id}", response_model=RolloutOut)
def get_rollout(rollout_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> RolloutOut:
    """Một đợt cập nhật / one rollout, with its progress wave by wave."""
    return service.rollout_out(session, service.get_rollout(session, rollout_id, principal.scope))


@router.get("/rollouts/{rollout_id}/targets", response_model=list[TargetOut])
def rollout_targets(
    rollout_id: RowId, session: SessionDep, principal: CurrentPrincipal,
    state: Annotated[TargetState | None, Query(description="only receivers in this state")] = None,
    wave: Annotated[int | None, Query(ge=0, lt=MAX_WAVES, description="only this wave (the first is 0)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=ID_MAX)] = 0,
) -> list[TargetOut]:
    """Từng máy thu / each receiver's update (only the caller's receivers), by wave."""
    service.get_rollout(session, rollout_id, principal.scope)
    rows = repository.targets_of(session, rollout_id, principal.scope, state=state.value if state else None,
                                 wave=wave, limit=limit, offset=offset)
    return [service.target_out(t) for t in rows]


@router.post("/rollouts/{rollout_id}/pause", response_model=RolloutOut)
def pause_rollout(rollout_id: RowId, session: SessionDep, principal: EngineerPrincipal,
                  data: ReasonIn | None = None) -> RolloutOut:
    """Tạm dừng / pause: nothing more is offered; receivers already offered carry on."""
    rollout = service.pause(session, rollout_id, _actor(principal), data.reason if data else None)
    return service.rollout_out(session, rollout)


@router.post("/rollouts/{rollout_id}/resume", response_model=RolloutOut)
def resume_rollout(rollout_id: RowId, session: SessionDep, principal: EngineerPrincipal) -> RolloutOut:
    """Tiếp tục / resume a paused rollout (the pace counts afresh)."""
    return service.rollout_out(session, service.resume(session, rollout_id, _actor(principal)))


@router.post("/rollouts/{rollout_id}/abort", response_model=RolloutOut)
def abort_rollout(rollout_id: RowId, session: SessionDep, principal: EngineerPrincipal,
                  data: ReasonIn | None = None) -> RolloutOut:
    """Huỷ / abort for good: receivers not offered yet are cancelled; those offered finish or
    fail on their own."""
    rollout = service.abort(session, rollout_id, _actor(principal), data.reason if data else None)
    return service.rollout_out(session, rollout)


@router.post("/rollouts/{rollout_id}/retry", response_model=RetryOut)
def retry_rollout(rollout_id: RowId, session: SessionDep, principal: EngineerPrincipal) -> RetryOut:
    """Cập nhật lại máy lỗi / the failed and rolled-back receivers go back to be offered again
    (a new attempt, a new command)."""
    retried = service.retry_failed(session, rollout_id, _actor(principal))
    rollout = service.get_rollout(session, rollout_id, principal.scope)
    return RetryOut(retried=retried, rollout=service.rollout_out(session, rollout))
