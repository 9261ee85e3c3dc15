"""What the auth API reads and writes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet_service.auth.models import Role
from fleet_service.db import RowId

class UserCreate(BaseModel):
    username: str = Field(max_length=100, examples=["kythuat.daitu"],
                          description="letters (no accents), digits, '.', '_', '-', '@'")
    password: str | None = Field(default=None, max_length=1024,
                                 description="at least 10 characters; null: the account signs in with API tokens only")
    role: Role
    region_id: RowId | None = Field(default=None, description="the subtree the user works in; null only for admins")
    full_name: str | None = Field(default=None, max_length=200)
    emergency: bool = Field(default=False, description="may send and stop emergency bulletins")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    full_name: str | None
    role: Role
    region_id: int | None
    active: bool
    emergency: bool
    created_at: datetime


class TokenCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, examples=["grafana"])
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="null: until revoked")


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class IssuedToken(TokenOut):
    """Shown once: only its SHA-256 is stored."""

    token: str


class AccessToken(BaseModel):
    """The OAuth2 password-flow answer (what Swagger UI's "Authorize" expects)."""

    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None


class Me(BaseModel):
    user_id: int
    username: str
    role: Role
    region_id: int | None
    region_path: str | None
