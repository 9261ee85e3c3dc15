"""Rollout queries for the API: the rollouts a caller may see, and their receivers."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from fleet_service.registry.models import Receiver
from fleet_service.rollouts.models import Rollout, RolloutTarget
from fleet_service.scope import RegionScope


def list_rollouts(session: Session, scope: RegionScope, *, states: Sequence[str] | None = None,
                  limit: int = 100, offset: int = 0) -> list[Rollout]:
    """Newest first; with a restricted scope, those with at least one receiver in it."""
    query = select(Rollout)
    if scope.restricted:
        query = query.where(exists(
            select(RolloutTarget.receiver_id).join(Receiver, Receiver.id == RolloutTarget.receiver_id)
            .where(RolloutTarget.rollout_id == Rollout.id, scope.receivers())))
    if states:
        query = query.where(Rollout.state.in_(list(states)))
    return list(session.scalars(query.order_by(Rollout.id.desc()).limit(limit).offset(offset)))


def targets_of(session: Session, rollout_id: int, scope: RegionScope, *, state: str | None = None,
               wave: int | None = None, limit: int = 1000, offset: int = 0) -> list[RolloutTarget]:
    """The rollout's receivers in the scope, by wave and id."""
    query = select(RolloutTarget).where(RolloutTarget.rollout_id == rollout_id)
    if scope.restricted:
        query = query.where(RolloutTarget.receiver_id.in_(scope.receiver_ids()))
    if state is not None:
        query = query.where(RolloutTarget.state == state)
    if wave is not None:
        query = query.where(RolloutTarget.wave == wave)
    return list(session.scalars(query.order_by(RolloutTarget.wave, RolloutTarget.receiver_id)
                                .limit(limit).offset(offset)))
