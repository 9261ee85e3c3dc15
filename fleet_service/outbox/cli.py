"""What a CLI command that changed something tells its user about the side effects."""

from __future__ import annotations

import typer
from sqlalchemy.orm import Session

from fleet_service.outbox.service import FOLLOW_TIMEOUT_S, recorded, wait_applied
from fleet_service.runtime import Runtime


def follow_in_cli(runtime: Runtime, session: Session) -> None:
    """After the command's commit: wait for the running service to apply what the command
    recorded (a broker login), and say whether it did."""
    ids = recorded(session)
    if not ids:
        return
    state = wait_applied(runtime.sessions, ids, timeout=FOLLOW_TIMEOUT_S)
    if state.applied:
        typer.echo("Đã áp dụng lên broker MQTT / applied on the MQTT broker")
    elif not state.worker_alive:
        typer.echo("Lưu ý: dịch vụ Loa không chạy; thay đổi sẽ được áp dụng lên broker khi dịch vụ khởi động.\n"
                   "Note: the Loa service is not running; the broker gets this change when it starts.", err=True)
    else:
        detail = "; ".join(state.errors) or f"not within {FOLLOW_TIMEOUT_S:.0f} s"
        typer.echo("Lưu ý: broker MQTT chưa nhận thay đổi; dịch vụ sẽ tự thử lại.\n"
                   f"Note: the MQTT broker has not taken the change yet ({detail}); the service keeps retrying.",
                   err=True)
