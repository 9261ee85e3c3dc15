"""Who is calling, and what they may do: the dependencies every domain's endpoints use.

    @router.get("/regions/{region_id}/availability")
    def availability(region_id: int, session: SessionDep, principal: CurrentPrincipal): ...
        # principal.scope.contains(region.path), or pass principal.scope to a service

    @router.post("/receivers/{receiver_id}/commands")
    def send(..., principal: Annotated[Principal, Depends(require_roles(Role.OPERATOR))]): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from fleet_service.audit.middleware import PRINCIPAL_STATE
from fleet_service.auth import service
from fleet_service.auth.models import Role
from fleet_service.deps import SessionDep
from fleet_service.errors import Forbidden, NotAuthenticated
from fleet_service.scope import RegionScope

TOKEN_URL = "/api/v1/auth/token"

# auto_error=False: a missing token is answered by our own bilingual 401, like a bad one.
_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. ``region_path`` is the materialised path of the subtree the
    caller may see and act on ("/1/7/"); None means the whole fleet."""

    user_id: int
    username: str
    role: Role
    region_id: int | None
    region_path: str | None
    emergency: bool = False  # may send and stop emergency bulletins

    @property
    def scope(self) -> RegionScope:
        """What the caller may see and act on (fleet_service.scope)."""
        return RegionScope(self.region_path)

    def can_access_path(self, path: str) -> bool:
        return self.scope.contains(path)


def get_current_principal(request: Request, session: SessionDep,
                          token: Annotated[str | None, Depends(_bearer)]) -> Principal:
    if not token:
        raise NotAuthenticated(
            "Cần đăng nhập: gửi 'Authorization: Bearer <mã truy cập>'",
            "Sign in first: send 'Authorization: Bearer <token>'",
        )
    user, path = service.resolve_token(session, token)
    principal = Principal(user.id, user.username, Role(user.role), user.region_id, path, user.emergency)
    setattr(request.state, PRINCIPAL_STATE, principal)  # the audit log's actor
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that lets through the given roles, and admins always."""
    allowed = frozenset(roles) | {Role.ADMIN}

    def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(allowed))
            raise Forbidden(
                f"Vai trò '{principal.role}' không được làm việc này (cần: {names})",
                f"The role '{principal.role}' may not do this (needs: {names})",
            )
        return principal

    return dependency


AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.ADMIN))]
TechnicianPrincipal = Annotated[Principal, Depends(require_roles(Role.TECHNICIAN))]
