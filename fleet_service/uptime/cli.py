"""``loa availability``: availability of a receiver, a station or a region over a period.

Asked of the running service (LOA_API_URL, LOA_API_TOKEN) through the availability endpoints:
what lies outside the caller's region is not found, as on the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer

from fleet_service import cli_support
from fleet_service.cli_support import ApiUrl, Token, parse_time
from fleet_service.errors import LoaError
from fleet_service.timefmt import duration_text, local_text, period

availability_app = typer.Typer(no_args_is_help=True)

FromOpt = Annotated[datetime | None, typer.Option("--from", help="Từ / from (giờ Việt Nam nếu không ghi múi giờ). Mặc định: 24 giờ trước.")]
ToOpt = Annotated[datetime | None, typer.Option("--to", help="Đến / to. Mặc định: bây giờ / now.")]
# Outages listed, longest first (the counts cover all of them).
OUTAGES_SHOWN = 10


def _print(title: str, a: dict[str, Any]) -> None:
    typer.echo(title)
    typer.echo(f"  Kỳ / period:            {local_text(parse_time(a['start']))} → {local_text(parse_time(a['end']))} (giờ Việt Nam)")
    typer.echo(f"  Số thiết bị / receivers: {a['receivers']}")
    if a["online_percent"] is None:
        typer.echo("  Chưa có dữ liệu trong kỳ này / no ledger data in this period")
        return
    typer.echo(f"  Tỷ lệ hoạt động / online: {a['online_percent']:.3f} %")
    typer.echo(f"  Số lần mất kết nối / outages: {a['outage_count']}")
    typer.echo(f"  Tổng thời gian mất / downtime: {duration_text(a['downtime_s'])}")
    # Every figure is the service's (the one definition, fleet_service/uptime/availability_sql.py);
    # the outages come longest first, so the first is the longest.
    outages = a["outages"]
    if outages:
        longest = outages[0]
        typer.echo(f"  Lâu nhất / longest: {duration_text(a['longest_outage_s'])} "
                   f"({longest['receiver_id']}, từ {local_text(parse_time(longest['start']))})")
    for outage in outages[:OUTAGES_SHOWN]:
        note = " (đang mất / ongoing)" if outage["ongoing"] else ""
        typer.echo(f"    - {outage['receiver_id']}: {local_text(parse_time(outage['start']))} → {local_text(parse_time(outage['end']))}"
                   f"  {duration_text(outage['duration_s'])}{note}")


def _report(api: str, token: str, start: datetime | None, end: datetime | None, subject: str,
            title: Callable[[httpx.Client], str]) -> None:
    """``subject`` is the API path of the receiver, station or region; ``title(client)`` names it."""
    try:
        lo, hi = period(start, end)
    except LoaError as exc:
        raise cli_support.fail(f"{exc.message_vi} / {exc.message_en}") from None
    # Without --to the service takes its own "now", once, for the end of the period and for
    # whether an outage is still going on.
    params = {"start": lo.isoformat()} if end is None else {"start": lo.isoformat(), "end": hi.isoformat()}
    with cli_support.client(api, token) as client:
        answer = cli_support.call(client, "GET", f"{subject}/availability", params=params)
        _print(title(client), answer)


@availability_app.command("receiver")
def receiver(receiver_id: str, start: FromOpt = None, end: ToOpt = None,
             api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Thiết bị thu / one receiver."""
    _report(api, token, start, end, f"/receivers/{quote(receiver_id, safe='')}",
            lambda _client: f"Thiết bị thu / receiver {receiver_id}")


@availability_app.command("station")
def station(station_id: int, start: FromOpt = None, end: ToOpt = None,
            api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Đài / one station, across every receiver that served it."""

    def title(client: httpx.Client) -> str:
        name = cli_support.call(client, "GET", f"/stations/{station_id}")["name"]
        return f"Đài / station {station_id}: {name}"

    _report(api, token, start, end, f"/stations/{station_id}", title)


@availability_app.command("region")
def region(region_id: int, start: FromOpt = None, end: ToOpt = None,
           api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Đơn vị hành chính / a region and everything below it."""

    def title(client: httpx.Client) -> str:
        found = cli_support.call(client, "GET", f"/regions/{region_id}")
        return f"Đơn vị / region {region_id}: {found['level']} {found['name']}"

    _report(api, token, start, end, f"/regions/{region_id}", title)
