"""``loa audit``: the audit log from a terminal, in Vietnam time."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from fleet_service.audit import service
from fleet_service.cli_runtime import loa_command
from fleet_service.cli_support import print_table
from fleet_service.db import session_scope
from fleet_service.timefmt import as_utc, local_text

audit_app = typer.Typer(no_args_is_help=True)

_OUTCOME_TEXT = {"ok": "xong / ok", "refused": "bị từ chối / refused", "error": "lỗi / error"}


@audit_app.command("list")
def audit_list(
    actor: Annotated[str | None, typer.Option(help="Chỉ của người này / only this actor")] = None,
    action: Annotated[str | None, typer.Option(
        help="Chỉ việc này (revoke_receiver, 'loa receivers revoke') / only this action")] = None,
    since: Annotated[datetime | None, typer.Option(help="Từ / from (giờ Việt Nam nếu không ghi múi giờ)")] = None,
    until: Annotated[datetime | None, typer.Option(help="Đến / until")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Số dòng / rows")] = 50,
) -> None:
    """Nhật ký thao tác, mới nhất trước / the audit log, newest first."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        entries = service.list_entries(session, actor=actor, action=action,
                                       since=as_utc(since) if since else None,
                                       until=as_utc(until) if until else None, limit=limit)
        if not entries:
            typer.echo("Không có thao tác nào / no actions recorded")
            return
        rows = [(local_text(e.at), e.actor or "(không rõ / unknown)", e.action, e.target,
                 f"{_OUTCOME_TEXT.get(e.outcome, e.outcome)} ({e.status})", e.client, e.detail) for e in entries]
        print_table(["Lúc / at", "Ai / actor", "Việc / action", "Đối tượng / target", "Kết quả / outcome",
                     "Từ / from", "Ghi chú / detail"], rows)
        typer.echo("Giờ Việt Nam / Vietnam time")
