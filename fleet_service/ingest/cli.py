"""``loa status``: which receivers are online, which are down and since when.

Asked of the running service (LOA_API_URL, LOA_API_TOKEN), as ``GET /api/v1/live/receivers``:
the service's live view, scoped to the caller's region."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from fleet_service import cli_support
from fleet_service.cli_support import ApiUrl, Token
from fleet_service.timefmt import duration_text, local_text

STATE_TEXT = {"online": "hoạt động / online", "offline": "MẤT KẾT NỐI / DOWN", "never_seen": "chưa thấy / never seen"}


def status(
    region_id: Annotated[int | None, typer.Option("--region", help="Chỉ đơn vị này / only this region's subtree")] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Liệt kê cả thiết bị đang hoạt động / list online ones too")] = False,
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Tình trạng / which receivers are down, and since when."""
    with cli_support.client(api, token) as client:
        stations = None
        if region_id is not None:
            # A region outside the caller's scope answers 404, as one that does not exist.
            stations = {s["id"] for s in cli_support.call(client, "GET", "/stations", params={"region_id": region_id})}
        fleet = cli_support.call(client, "GET", "/live/receivers")
    now = datetime.now(UTC)
    counts = {"online": 0, "offline": 0, "never_seen": 0}
    lines = []
    for receiver in fleet["receivers"]:
        if stations is not None and receiver["station_id"] not in stations:
            continue
        state = receiver["state"]
        counts[state] += 1
        if state == "online" and not show_all:
            continue
        since = ""
        if receiver["since"]:
            start = datetime.fromisoformat(receiver["since"])
            since = f"từ / since {local_text(start)} ({duration_text((now - start).total_seconds())})"
        lines.append(f"  {receiver['receiver_id']:<20} {receiver['station_name'] or '—':<36} "
                     f"{STATE_TEXT[state]:<24} {since}")
    typer.echo(f"Hoạt động / online: {counts['online']}   Mất kết nối / down: {counts['offline']}   "
               f"Chưa thấy / never seen: {counts['never_seen']}")
    for line in lines:
        typer.echo(line)
