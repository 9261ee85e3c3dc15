"""Users and API tokens. Nothing here commits; the request or CLI command does."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from fleet_service.auth import repository as repo
from fleet_service.auth.models import ApiToken, Role, User
from fleet_service.auth.security import hash_password, new_token, token_hash, verify_password
from fleet_service.db import utcnow
from fleet_service.errors import Conflict, Invalid, NotAuthenticated, NotFound
from fleet_service.registry import service as registry
from fleet_service.scope import RegionScope, ScopeLike

# Bytes of randomness in an API token: 256 bits.
API_TOKEN_BYTES = 32
# A token from the login form (Swagger UI, scripts that sign in) lasts a working day and a
# bit; long-lived tokens for Grafana or scripts are made on purpose, with a name.
LOGIN_TOKEN_LIFETIME = timedelta(hours=12)
# last_used_at is written at most this often per token, so that reads do not turn every API
# call into a write (SQLite has one writer at a time).
LAST_USED_RESOLUTION = timedelta(minutes=1)

_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")

# Shortest password a person may choose: length matters more than character classes.
MIN_PASSWORD_LENGTH = 10


def _bad_login() -> NotAuthenticated:
    return NotAuthenticated("Sai tên đăng nhập hoặc mật khẩu", "Wrong username or password")


def _bad_token() -> NotAuthenticated:
    return NotAuthenticated(
        "Mã truy cập không hợp lệ, đã hết hạn hoặc đã bị thu hồi: hãy đăng nhập lại",
        "The access token is invalid, expired or revoked: sign in again",
    )


def _disabled() -> NotAuthenticated:
    return NotAuthenticated("Tài khoản đã bị khoá", "This account is disabled")


def _check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(
            f"Mật khẩu phải dài ít nhất {MIN_PASSWORD_LENGTH} ký tự",
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters long",
        )


# --- users -------------------------------------------------------------------------------

def create_user(
    session: Session,
    username: str,
    *,
    role: Role | str,
    password: str | None = None,
    region_id: int | None = None,
    full_name: str | None = None,
    scope: ScopeLike = None,
    emergency: bool = False,
) -> User:
    """``password`` None: an account that signs in with API tokens only. Everyone but an
    admin works within a region's subtree. ``scope`` is the creating admin's own."""
    if not _USERNAME.match(username):
        raise Invalid(
            f"Tên đăng nhập '{username}' không hợp lệ: dùng chữ không dấu, số, '.', '_', '-', '@'",
            f"Invalid username '{username}': use letters (no accents), digits, '.', '_', '-', '@'",
        )
    try:
        role = Role(role)
    except ValueError:
        raise Invalid(
            f"Vai trò '{role}' không tồn tại (chọn: {', '.join(Role)})",
            f"Unknown role '{role}' (choose: {', '.join(Role)})",
        ) from None
    if region_id is None and (role is not Role.ADMIN or RegionScope.of(scope).restricted):
        raise Invalid(
            "Người dùng này phải được gán một đơn vị hành chính làm phạm vi",
            "This user must be given a region as their scope",
        )
    if region_id is not None:
        region_id = registry.get_region(session, region_id, scope=scope).id
    if password is not None:
        _check_password_policy(password)
    if repo.get_user_by_username(session, username) is not None:
        raise Conflict(f"Tên đăng nhập '{username}' đã tồn tại", f"Username '{username}' already exists")
    user = User(
        username=username,
        full_name=full_name,
        password_hash=hash_password(password) if password is not None else None,
        role=role.value,
        region_id=region_id,
        active=True,
        emergency=emergency,
    )
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str, *, scope: ScopeLike = None) -> User:
    """By username, within the caller's scope."""
    user = repo.get_user_by_username(session, username, scope=scope)
    if user is None:
        raise NotFound(f"Không tìm thấy người dùng '{username}'", f"User '{username}' not found")
    return user


def list_users(session: Session, *, scope: ScopeLike = None) -> Sequence[User]:
    return repo.list_users(session, scope=scope)


def set_user_active(session: Session, username: str, active: bool, *, scope: ScopeLike = None) -> User:
    """A disabled user's tokens stop working at once; enabling the user again restores them."""
    user = get_user(session, username, scope=scope)
    user.active = active
    session.flush()
    return user


def set_emergency(session: Session, username: str, allowed: bool, *, scope: ScopeLike = None) -> User:
    user = get_user(session, username, scope=scope)
    user.emergency = allowed
    return user


def set_password(session: Session, username: str, password: str, *, scope: ScopeLike = None) -> User:
    _check_password_policy(password)
    user = get_user(session, username, scope=scope)
    user.password_hash = hash_password(password)
    session.flush()
    return user


def authenticate(session: Session, username: str, password: str) -> User:
    """The active user with this username and password, or NotAuthenticated. Unknown users cost
    as much time as wrong passwords."""
    user = repo.get_user_by_username(session, username)
    ok = verify_password(password, user.password_hash if user is not None else None)
    if user is None or not ok:
        raise _bad_login()
    if not user.active:
        raise _disabled()
    return user


# --- API tokens --------------------------------------------------------------------------

def issue_token(session: Session, user_id: int, name: str, *, expires_at: datetime | None = None) -> tuple[ApiToken, str]:
    """A new token for a user: the row, and the token itself (shown once, stored hashed)."""
    token = new_token(API_TOKEN_BYTES)
    row = ApiToken(user_id=user_id, name=name, token_hash=token_hash(token), created_at=utcnow(), expires_at=expires_at)
    session.add(row)
    session.flush()
    return row, token


def login(session: Session, username: str, password: str) -> tuple[ApiToken, str]:
    """Username and password in, a token valid for LOGIN_TOKEN_LIFETIME out."""
    user = authenticate(session, username, password)
    return issue_token(session, user.id, "login", expires_at=utcnow() + LOGIN_TOKEN_LIFETIME)


def resolve_token(session: Session, token: str) -> tuple[User, str | None]:
    """The user a bearer token stands for and the path of its region (None: whole fleet).
    Refuses unknown, revoked and expired tokens and disabled users; notes the use."""
    found = repo.token_with_owner(session, token_hash(token))
    if found is None:
        raise _bad_token()
    row, user, path = found
    now = utcnow()
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise _bad_token()
    if not user.active:
        raise _disabled()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        row.last_used_at = now
    return user, path


def list_tokens(session: Session, *, user_id: int | None = None) -> Sequence[ApiToken]:
    return repo.list_tokens(session, user_id=user_id)


def revoke_token(session: Session, token_id: int, *, user_id: int | None = None) -> ApiToken:
    """Revoke a token; with ``user_id``, only one of that user's own."""
    row = repo.get_token(session, token_id)
    if row is None or (user_id is not None and row.user_id != user_id):
        raise NotFound(f"Không tìm thấy mã truy cập {token_id}", f"API token {token_id} not found")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
