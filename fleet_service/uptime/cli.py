"""``loa availability``: availability of a receiver, a station or a region over a period."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from fleet_service.db import session_scope
from fleet_service.timefmt import duration_text, local_text, period
from fleet_service.uptime import service
from fleet_service.uptime.availability import Availability
from fleet_service.errors import NotFound
from fleet_service.registry import service as registry

availability_app = typer.Typer(no_args_is_help=True)

FromOpt = Annotated[datetime | None, typer.Option("--from", help="Từ / from (giờ Việt Nam nếu không ghi múi giờ). Mặc định: 24 giờ trước.")]
ToOpt = Annotated[datetime | None, typer.Option("--to", help="Đến / to. Mặc định: bây giờ / now.")]


def _print(title: str, a: Availability) -> None:
    fraction = a.online_fraction
    typer.echo(title)
    typer.echo(f"  Kỳ / period:            {local_text(a.start)} → {local_text(a.end)} (giờ Việt Nam)")
    typer.echo(f"  Số thiết bị / receivers: {a.receivers}")
    if fraction is None:
        typer.echo("  Chưa có dữ liệu trong kỳ này / no ledger data in this period")
        return
    typer.echo(f"  Tỷ lệ hoạt động / online: {fraction * 100:.3f} %")
    typer.echo(f"  Số lần mất kết nối / outages: {len(a.outages)}")
    typer.echo(f"  Tổng thời gian mất / downtime: {duration_text(a.downtime.total_seconds())}")
    longest = a.longest_outage
    if longest is not None:
        typer.echo(f"  Lâu nhất / longest: {duration_text(longest.duration.total_seconds())} "
                   f"({longest.receiver_id}, từ {local_text(longest.start)})")
    for outage in sorted(a.outages, key=lambda o: o.duration, reverse=True)[:10]:
        note = " (đang mất / ongoing)" if outage.ongoing else ""
        typer.echo(f"    - {outage.receiver_id}: {local_text(outage.start)} → {local_text(outage.end)}"
                   f"  {duration_text(outage.duration.total_seconds())}{note}")


def _report(start: datetime | None, end: datetime | None, measure) -> None:  # type: ignore[no-untyped-def]
    """``measure(session, lo, hi)`` looks the subject up (NotFound ends the command with a clear
    message) and returns (title, availability)."""
    from fleet_service.cli import cli_runtime

    lo, hi = period(start, end)
    with cli_runtime() as runtime, session_scope(runtime.sessions) as session:
        try:
            title, availability = measure(session, lo, hi)
        except NotFound as exc:
            typer.echo(f"{exc.message_vi} / {exc.message_en}", err=True)
            raise typer.Exit(1) from None
        _print(title, availability)


@availability_app.command("receiver")
def receiver(receiver_id: str, start: FromOpt = None, end: ToOpt = None) -> None:
    """Thiết bị thu / one receiver."""

    def measure(session, lo, hi):  # type: ignore[no-untyped-def]
        registry.get_receiver(session, receiver_id)
        return f"Thiết bị thu / receiver {receiver_id}", service.receiver_availability(session, receiver_id, lo, hi)

    _report(start, end, measure)


@availability_app.command("station")
def station(station_id: int, start: FromOpt = None, end: ToOpt = None) -> None:
    """Đài / one station, across every receiver that served it."""

    def measure(session, lo, hi):  # type: ignore[no-untyped-def]
        name = registry.get_station(session, station_id).name
        return f"Đài / station {station_id}: {name}", service.station_availability(session, station_id, lo, hi)

    _report(start, end, measure)


@availability_app.command("region")
def region(region_id: int, start: FromOpt = None, end: ToOpt = None) -> None:
    """Đơn vị hành chính / a region and everything below it."""

    def measure(session, lo, hi):  # type: ignore[no-untyped-def]
        found = registry.get_region(session, region_id)
        return (f"Đơn vị / region {region_id}: {found.level} {found.name}",
                service.region_availability(session, found.path, lo, hi))

    _report(start, end, measure)
