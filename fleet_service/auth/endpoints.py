"""Sign-in, API tokens and user management."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import OAuth2PasswordRequestForm

from fleet_service.audit.middleware import ATTEMPTED_USER_STATE
from fleet_service.auth import service
from fleet_service.auth.dependencies import AdminPrincipal, CurrentPrincipal
from fleet_service.auth.models import Role
from fleet_service.auth.schemas import AccessToken, IssuedToken, Me, TokenCreate, TokenOut, UserCreate, UserOut
from fleet_service.auth.throttle import LoginThrottleDep
from fleet_service.db import RowId, utcnow
from fleet_service.deps import SessionDep

router = APIRouter(tags=["auth"])


@router.post("/auth/token", response_model=AccessToken)
def sign_in(form: Annotated[OAuth2PasswordRequestForm, Depends()], session: SessionDep, response: Response,
            request: Request, throttle: LoginThrottleDep) -> AccessToken:
    """Username and password (form fields, OAuth2 password flow) for a token valid 12 hours.
    Attempts are limited per client address and per username (429 with Retry-After)."""
    setattr(request.state, ATTEMPTED_USER_STATE, form.username)  # the audit log's actor
    throttle.attempt(request.client.host if request.client else "unknown", form.username)
    row, token = service.login(session, form.username, form.password)
    response.headers["Cache-Control"] = "no-store"
    return AccessToken(access_token=token, expires_at=row.expires_at)


@router.get("/auth/me", response_model=Me)
def who_am_i(principal: CurrentPrincipal) -> Me:
    return Me(
        user_id=principal.user_id,
        username=principal.username,
        role=principal.role,
        region_id=principal.region_id,
        region_path=principal.region_path,
    )


@router.get("/auth/tokens", response_model=list[TokenOut])
def my_tokens(session: SessionDep, principal: CurrentPrincipal) -> list[TokenOut]:
    return [TokenOut.model_validate(t) for t in service.list_tokens(session, user_id=principal.user_id)]


@router.post("/auth/tokens", response_model=IssuedToken, status_code=201)
def create_token(data: TokenCreate, session: SessionDep, principal: CurrentPrincipal, response: Response) -> IssuedToken:
    """A named token for scripts or Grafana, for the caller. The token is in this answer only."""
    response.headers["Cache-Control"] = "no-store"
    expires_at = utcnow() + timedelta(days=data.expires_in_days) if data.expires_in_days else None
    row, token = service.issue_token(session, principal.user_id, data.name, expires_at=expires_at)
    return IssuedToken(**TokenOut.model_validate(row).model_dump(), token=token)


@router.delete("/auth/tokens/{token_id}", response_model=TokenOut)
def revoke_token(token_id: RowId, session: SessionDep, principal: CurrentPrincipal) -> TokenOut:
    """Revoke one of the caller's tokens (an admin of the whole fleet: anyone's)."""
    own_only = None if principal.role is Role.ADMIN and principal.scope.whole_fleet else principal.user_id
    return TokenOut.model_validate(service.revoke_token(session, token_id, user_id=own_only))


@router.get("/users", response_model=list[UserOut])
def list_users(session: SessionDep, principal: AdminPrincipal) -> list[UserOut]:
    return [UserOut.model_validate(u) for u in service.list_users(session, scope=principal.scope)]


@router.post("/users", response_model=UserOut, status_code=201)
def create_user(data: UserCreate, session: SessionDep, principal: AdminPrincipal) -> UserOut:
    user = service.create_user(
        session,
        data.username,
        role=data.role,
        password=data.password,
        region_id=data.region_id,
        full_name=data.full_name,
        scope=principal.scope,
        emergency=data.emergency,
    )
    return UserOut.model_validate(user)


@router.post("/users/{username}/disable", response_model=UserOut)
def disable_user(username: str, session: SessionDep, principal: AdminPrincipal) -> UserOut:
    return UserOut.model_validate(service.set_user_active(session, username, False, scope=principal.scope))


@router.post("/users/{username}/enable", response_model=UserOut)
def enable_user(username: str, session: SessionDep, principal: AdminPrincipal) -> UserOut:
    return UserOut.model_validate(service.set_user_active(session, username, True, scope=principal.scope))
