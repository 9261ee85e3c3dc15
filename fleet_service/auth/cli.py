"""``loa users`` and ``loa tokens``. The first admin is made here:

    loa users create admin --role admin          (asks for the password)
    loa tokens create admin --name grafana       (prints the token once)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from fleet_service.auth import service
from fleet_service.auth.models import Role
from fleet_service.cli_runtime import loa_command
from fleet_service.cli_support import print_table
from fleet_service.db import session_scope, utcnow
from fleet_service.timefmt import local_text

users_app = typer.Typer(no_args_is_help=True)
tokens_app = typer.Typer(no_args_is_help=True)

_ROLE_TEXT = {
    Role.ADMIN: "quản trị / admin",
    Role.OPERATOR: "vận hành / operator",
    Role.TECHNICIAN: "kỹ thuật / technician",
    Role.VIEWER: "xem / viewer",
}


@users_app.command("create")
def users_create(
    username: str,
    role: Annotated[Role, typer.Option(help="Vai trò / role")],
    region: Annotated[int | None, typer.Option(help="ID đơn vị phạm vi (bắt buộc trừ admin) / scope region id")] = None,
    full_name: Annotated[str | None, typer.Option(help="Họ tên / full name")] = None,
    password: Annotated[str | None, typer.Option(help="Mật khẩu (không ghi thì được hỏi) / password (prompted if left out)")] = None,
    token_only: Annotated[bool, typer.Option("--token-only", help="Không mật khẩu, chỉ dùng mã API / no password, API tokens only")] = False,
    emergency: Annotated[bool, typer.Option("--emergency", help="Được phát/dừng bản tin khẩn cấp / may send and stop emergency bulletins")] = False,
) -> None:
    """Tạo người dùng / create a user."""
    if password is None and not token_only:
        password = typer.prompt("Mật khẩu / password", hide_input=True, confirmation_prompt=True)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        user = service.create_user(session, username, role=role, password=None if token_only else password,
                                   region_id=region, full_name=full_name, emergency=emergency)
        where = user.region.name if user.region else "toàn mạng / whole fleet"
        typer.echo(f"Đã tạo / created {user.username}: {_ROLE_TEXT[Role(user.role)]}, phạm vi / scope: {where}")


@users_app.command("list")
def users_list() -> None:
    """Danh sách người dùng / list users."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        users = service.list_users(session)
        rows = [(u.id, u.username, u.full_name, _ROLE_TEXT[Role(u.role)],
                 u.region.name if u.region else "toàn mạng / whole fleet",
                 "có / yes" if u.active else "khoá / disabled") for u in users]
        print_table(["ID", "Tên đăng nhập / username", "Họ tên / name", "Vai trò / role", "Phạm vi / scope",
                     "Hoạt động / active"], rows)


@users_app.command("disable")
def users_disable(username: str) -> None:
    """Khoá tài khoản (mã API của người đó ngừng hoạt động ngay) / disable a user and their tokens."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.set_user_active(session, username, False)
        typer.echo(f"Đã khoá / disabled {username}")


@users_app.command("enable")
def users_enable(username: str) -> None:
    """Mở khoá tài khoản / enable a user again."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.set_user_active(session, username, True)
        typer.echo(f"Đã mở khoá / enabled {username}")


@users_app.command("emergency")
def users_emergency(
    username: str,
    allowed: Annotated[bool, typer.Option("--allow/--deny", help="Cho phép hay không / allow or deny")] = True,
) -> None:
    """Quyền phát bản tin khẩn cấp / allow or deny emergency bulletins."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        user = service.set_emergency(session, username, allowed)
        typer.echo(f"{user.username}: {'được / may' if allowed else 'không được / may not'} "
                   "phát bản tin khẩn cấp / send emergency bulletins")


@users_app.command("password")
def users_password(
    username: str,
    password: Annotated[str | None, typer.Option(help="Mật khẩu mới (không ghi thì được hỏi) / new password")] = None,
) -> None:
    """Đặt mật khẩu mới / set a new password."""
    if password is None:
        password = str(typer.prompt("Mật khẩu mới / new password", hide_input=True, confirmation_prompt=True))
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.set_password(session, username, password)
        typer.echo(f"Đã đổi mật khẩu / password changed for {username}")


@tokens_app.command("create")
def tokens_create(
    username: str,
    name: Annotated[str, typer.Option(help="Dùng cho việc gì / what it is for")] = "cli",
    expires_days: Annotated[int | None, typer.Option(min=1, help="Hết hạn sau số ngày / expires after days")] = None,
) -> None:
    """Tạo mã truy cập API cho một người dùng / issue an API token for a user."""
    expires_at = utcnow() + timedelta(days=expires_days) if expires_days else None
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        user = service.get_user(session, username)
        row, token = service.issue_token(session, user.id, name, expires_at=expires_at)
    typer.echo(f"Mã truy cập / API token (ID {row.id}, {username}, hết hạn / expires: {local_text(row.expires_at)}):")
    typer.echo(token)
    typer.echo("Mã chỉ hiện một lần này; dùng: 'Authorization: Bearer <mã>'.")
    typer.echo("Shown this once only; use it as 'Authorization: Bearer <token>'.")


@tokens_app.command("list")
def tokens_list(
    user: Annotated[str | None, typer.Option(help="Chỉ của người dùng này / only this user's")] = None,
) -> None:
    """Danh sách mã truy cập (không hiện mã) / list API tokens (never the tokens themselves)."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        user_id = service.get_user(session, user).id if user else None
        now = utcnow()
        rows = []
        for t in service.list_tokens(session, user_id=user_id):
            if t.revoked_at is not None:
                state = "đã thu hồi / revoked"
            elif t.expires_at is not None and t.expires_at <= now:
                state = "hết hạn / expired"
            else:
                state = "hiệu lực / valid"
            rows.append((t.id, t.user.username, t.name, local_text(t.created_at), local_text(t.expires_at),
                         local_text(t.last_used_at), state))
        print_table(["ID", "Người dùng / user", "Tên / name", "Tạo lúc / created", "Hết hạn / expires",
                     "Dùng lần cuối / last used", "Trạng thái / state"], rows)
        typer.echo("Giờ Việt Nam / Vietnam time")


@tokens_app.command("revoke")
def tokens_revoke(token_id: int) -> None:
    """Thu hồi mã truy cập / revoke an API token."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.revoke_token(session, token_id)
        typer.echo(f"Đã thu hồi mã / revoked token {token_id}")
