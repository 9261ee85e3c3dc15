"""``loa status``: which receivers are online, which are down and since when (from the ledger)."""

from __future__ import annotations

from typing import Annotated

import typer

from fleet_service.db import session_scope, utcnow
from fleet_service.ingest.repository import receivers_with_open_interval
from fleet_service.timefmt import duration_text, local_text


def status(
    region_id: Annotated[int | None, typer.Option("--region", help="Chỉ đơn vị này / only this region's subtree")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Liệt kê cả thiết bị đang hoạt động / list online ones too")] = False,
) -> None:
    """Tình trạng / which receivers are down, and since when."""
    from fleet_service.cli import cli_runtime
    from fleet_service.errors import NotFound
    from fleet_service.registry import service as registry

    with cli_runtime() as runtime, session_scope(runtime.sessions) as session:
        path = None
        if region_id is not None:
            try:
                path = registry.get_region(session, region_id).path
            except NotFound as exc:
                typer.echo(f"{exc.message_vi} / {exc.message_en}", err=True)
                raise typer.Exit(1) from None
        rows = receivers_with_open_interval(session, path)
    now = utcnow()
    counts = {"online": 0, "offline": 0, "never_seen": 0}
    lines = []
    for receiver_id, _station_id, station_name, _path, interval in rows:
        state = interval.state if interval is not None else "never_seen"
        counts[state] += 1
        if state == "online" and not show_all:
            continue
        label = {"online": "hoạt động / online", "offline": "MẤT KẾT NỐI / DOWN", "never_seen": "chưa thấy / never seen"}[state]
        since = ""
        if interval is not None:
            since = f"từ / since {local_text(interval.start_at)} ({duration_text((now - interval.start_at).total_seconds())})"
        lines.append(f"  {receiver_id:<20} {station_name or '—':<36} {label:<24} {since}")
    typer.echo(f"Hoạt động / online: {counts['online']}   Mất kết nối / down: {counts['offline']}   "
               f"Chưa thấy / never seen: {counts['never_seen']}")
    for line in lines:
        typer.echo(line)
