"""Every auth query."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet_service.auth.models import ApiToken, User
from fleet_service.registry.models import Region
from fleet_service.scope import RegionScope, ScopeLike


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def get_user_by_username(session: Session, username: str, *, scope: ScopeLike = None) -> User | None:
    return session.scalar(select(User).where(User.username == username, RegionScope.of(scope).users()))


def list_users(session: Session, *, scope: ScopeLike = None) -> Sequence[User]:
    """Users whose region lies in ``scope``; users without a region only in the whole fleet."""
    return session.scalars(select(User).where(RegionScope.of(scope).users()).order_by(User.username)).all()


def token_with_owner(session: Session, token_hash: str) -> tuple[ApiToken, User, str | None] | None:
    """The token, its user and the path of the user's region (None without one), in one query."""
    found = session.execute(
        select(ApiToken, User, Region.path)
        .join(User, ApiToken.user_id == User.id)
        .outerjoin(Region, User.region_id == Region.id)
        .where(ApiToken.token_hash == token_hash)
    ).first()
    if found is None:
        return None
    token, user, path = found
    return token, user, path


def get_token(session: Session, token_id: int) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def list_tokens(session: Session, *, user_id: int | None = None) -> Sequence[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return session.scalars(query).all()
