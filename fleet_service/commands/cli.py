"""``loa commands``: send a command, follow it live, read the audit log.

These talk to the running service's API (LOA_API_URL, LOA_API_TOKEN), not to the database:
only the running service can deliver a command, and the token decides what the caller may
command and see, exactly as on the API."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import httpx
import typer

from fleet_service import cli_support
from fleet_service.cli_support import ApiUrl, Token, parse_time
from fleet_service.timefmt import local_text

commands_app = typer.Typer(no_args_is_help=True)

# How often the live view asks for progress.
WATCH_INTERVAL_S = 0.5
# How long the live view waits for every receiver's outcome before it says who it still waits
# for and returns (the command goes on in the service). A receiver answers within about 15 s
# even when the stream cannot be reached; one that is offline, or went offline after it
# accepted, answers only when it is back, which may be long after (until the command expires).
WAIT_S = 30.0
OPEN_TEXT = {
    "pending": "chưa kết nối: sẽ nhận lệnh khi kết nối lại / offline: gets it when it reconnects",
    "sent": "đã gửi, chưa trả lời / sent, no answer yet",
    "accepted": "đã nhận, chưa báo kết quả (đang mở luồng phát?) / accepted, no outcome yet (opening the stream?)",
}
STATUS_TEXT = {
    "pending": "chờ kết nối / waiting", "sent": "đã gửi / sent", "accepted": "đang làm / accepted",
    "done": "xong / done", "failed": "lỗi / failed", "rejected": "từ chối / rejected",
    "expired": "hết hạn / expired", "superseded": "bị thay / superseded",
}
_ORDER = list(STATUS_TEXT)

# The HTTP client shared with ``loa status`` and ``loa availability``.
_client = cli_support.client
_call = cli_support.call


def _progress_line(command: dict[str, Any]) -> str:
    progress = command["progress"]
    parts = [f"{STATUS_TEXT[s]}: {progress[s]}" for s in _ORDER if progress.get(s)]
    final = sum(progress.get(s, 0) for s in ("done", "failed", "rejected", "expired", "superseded"))
    return f"{final}/{command['targets']} có kết quả / answered — " + ", ".join(parts)


@commands_app.command("send")
def send(
    op: Annotated[str, typer.Argument(help="play | stop | volume | reboot | config")],
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
    receiver: Annotated[str | None, typer.Option(help="Một thiết bị / one receiver id")] = None,
    station: Annotated[int | None, typer.Option(help="Một đài / a station id")] = None,
    region: Annotated[int | None, typer.Option(help="Một đơn vị và các đơn vị con / a region subtree id")] = None,
    fleet: Annotated[bool, typer.Option("--fleet", help="Toàn hệ thống / the whole fleet")] = False,
    url: Annotated[str | None, typer.Option(help="Luồng phát (play) / stream URL")] = None,
    volume: Annotated[int | None, typer.Option(help="0–100 (volume)")] = None,
    duration: Annotated[int | None, typer.Option(help="Giây (play) / seconds")] = None,
    priority: Annotated[str, typer.Option(help="normal | priority | emergency")] = "normal",
    expires_in: Annotated[int | None, typer.Option(help="Hết hạn sau (giây) / expires after seconds")] = None,
    setting: Annotated[list[str] | None, typer.Option(help="config: key=value (telemetry_interval, keepalive, ntp)")] = None,
    note: Annotated[str | None, typer.Option(help="Ghi chú / note")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Theo dõi đến khi xong / follow live")] = True,
    wait: Annotated[float, typer.Option(help="Chờ kết quả tối đa (giây; 0: đến khi hết hạn) / "
                                             "longest wait for the outcomes (s; 0: until expiry)")] = WAIT_S,
) -> None:
    """Gửi lệnh / send a command; by default follows it until every receiver has answered."""
    target = {"receiver": receiver, "station": station, "region": region, "fleet": fleet or None}
    body: dict[str, Any] = {"target": {k: v for k, v in target.items() if v is not None}, "op": op,
                            "priority": priority}
    for key, value in (("url", url), ("volume", volume), ("duration_s", duration), ("expires_in_s", expires_in),
                       ("note", note)):
        if value is not None:
            body[key] = value
    if setting:
        body["settings"] = dict(_setting(s) for s in setting)
    with _client(api, token) as client:
        command = _call(client, "POST", "/commands", json=body)
        typer.echo(f"Lệnh / command {command['id']}: {op} → {command['target_name']} "
                   f"({command['targets']} thiết bị / receivers), hết hạn / expires {local_text(parse_time(command['expires_at']))}")
        if watch:
            _watch(client, command["id"], wait)


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise typer.BadParameter(f"'{text}': use key=value")
    return key, int(value) if value.isdigit() else value


def _watch(client: httpx.Client, command_id: str, wait: float = WAIT_S) -> None:
    """A live line of progress (rewritten in place on a terminal) until all answered or expired,
    or until ``wait`` seconds have passed: then who is still awaited, and why."""
    live = sys.stdout.isatty()
    last = ""
    deadline = time.monotonic() + wait if wait > 0 else None
    while True:
        command = _call(client, "GET", f"/commands/{command_id}")
        line = _progress_line(command)
        if line != last:
            typer.echo(("\r\033[K" + line) if live else line, nl=not live)
            last = line
        open_ = sum(command["progress"].get(s, 0) for s in ("pending", "sent", "accepted"))
        if not open_ or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(WATCH_INTERVAL_S)
    if live:
        typer.echo("")
    _show_problems(client, command_id)
    if open_:
        _show_awaited(client, command, wait)


def _show_awaited(client: httpx.Client, command: dict[str, Any], wait: float) -> None:
    awaited = [t for t in _call(client, "GET", f"/commands/{command['id']}/targets") if t["status"] in OPEN_TEXT]
    typer.echo(f"Sau {wait:g} giây còn chờ {len(awaited)} thiết bị / after {wait:g} s still waiting for "
               f"{len(awaited)} receivers:")
    for t in awaited:
        typer.echo(f"  {t['receiver_id']:<20} {OPEN_TEXT[t['status']]}")
    typer.echo(f"Lệnh vẫn còn hiệu lực đến / the command stays in force until {local_text(parse_time(command['expires_at']))}; "
               f"theo dõi tiếp / follow it: loa commands show {command['id']} --watch")


def _show_problems(client: httpx.Client, command_id: str) -> None:
    targets = _call(client, "GET", f"/commands/{command_id}/targets")
    for t in targets:
        if t["status"] in ("failed", "rejected", "expired"):
            typer.echo(f"  {t['receiver_id']:<20} {STATUS_TEXT[t['status']]:<22} {t['reason_text'] or t['reason'] or ''}")


@commands_app.command("show")
def show(command_id: str, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
         watch: Annotated[bool, typer.Option("--watch", help="Theo dõi trực tiếp / follow live")] = False,
         wait: Annotated[float, typer.Option(help="Chờ tối đa (giây; 0: đến khi hết hạn) / longest wait "
                                                  "(s; 0: until expiry)")] = 0) -> None:
    """Kết quả từng thiết bị / each receiver's outcome of one command."""
    with _client(api, token) as client:
        command = _call(client, "GET", f"/commands/{command_id}")
        typer.echo(f"{command['id']}  {command['op']} ({command['priority']})  → {command['target_name']}  "
                   f"bởi / by {command['issued_by']}  {local_text(parse_time(command['issued_at']))}")
        if watch:
            _watch(client, command_id, wait)
            return
        typer.echo(_progress_line(command))
        for t in _call(client, "GET", f"/commands/{command_id}/targets"):
            when = local_text(parse_time(t["finished_at"])) if t["finished_at"] else ""
            typer.echo(f"  {t['receiver_id']:<20} {STATUS_TEXT[t['status']]:<22} {when:<20} {t['reason_text'] or ''}")


@commands_app.command("list")
def list_commands(api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
                  start: Annotated[str | None, typer.Option(help="Từ / from (ISO 8601, giờ Việt Nam)")] = None,
                  end: Annotated[str | None, typer.Option(help="Đến / until")] = None,
                  receiver: Annotated[str | None, typer.Option(help="Chỉ lệnh tới thiết bị này / only to this receiver")] = None,
                  limit: int = 50) -> None:
    """Nhật ký lệnh / the audit log: who sent what to whom, when, and the outcomes."""
    params = {k: v for k, v in {"start": start, "end": end, "receiver": receiver, "limit": limit}.items() if v is not None}
    with _client(api, token) as client:
        rows = _call(client, "GET", "/commands", params=params)
    if not rows:
        typer.echo("Không có lệnh nào / no commands in this period")
    for c in rows:
        typer.echo(f"{local_text(parse_time(c['issued_at']))}  {c['id']}  {c['issued_by']:<16} {c['op']:<8} {c['priority']:<9} "
                   f"→ {c['target_name']:<28} {_progress_line(c)}")
