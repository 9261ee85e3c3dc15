"""Every auth query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from fleet_service.auth.models import ApiToken, User
from fleet_service.registry.models import Region


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def get_user_by_username(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session, *, scope: str | None = None) -> Sequence[User]:
    """Users whose region lies under ``scope``; users without a region only when unscoped."""
    query = select(User).order_by(User.username)
    if scope is not None:
        query = query.join(Region, User.region_id == Region.id).where(Region.path.startswith(scope))
    return session.scalars(query).all()


def region_path(session: Session, region_id: int) -> str | None:
    return session.scalar(select(Region.path).where(Region.id == region_id))


def token_with_owner(session: Session, token_hash: str) -> Row[tuple[ApiToken, User, str | None]] | None:
    """The token, its user and the path of the user's region, in one query."""
    return session.execute(
        select(ApiToken, User, Region.path)
        .join(User, ApiToken.user_id == User.id)
        .outerjoin(Region, User.region_id == Region.id)
        .where(ApiToken.token_hash == token_hash)
    ).first()


def get_token(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def list_tokens(session: Session, *, user_id: int | None = None) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return session.scalars(query).all()
