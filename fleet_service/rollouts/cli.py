"""``loa rollouts``: create a rollout of a firmware release, follow it live, pause, resume,
abort, retry the failed.

These talk to the running service's API (LOA_API_URL, LOA_API_TOKEN), as ``loa commands``
does: the leading worker drives the rollout, and the token decides which receivers the caller
may update and see. Times are Vietnam time (Asia/Ho_Chi_Minh); waves are counted from 1."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from fleet_service import cli_support
from fleet_service.cli_support import ApiUrl, Token, parse_time, print_table
from fleet_service.rollouts.plan import ALL_DAYS
from fleet_service.schedules.schemas import DAY_NAMES, days_of
from fleet_service.timefmt import local_text

rollouts_app = typer.Typer(no_args_is_help=True)

# How often ``show --watch`` asks for progress.
WATCH_INTERVAL_S = 2.0
BAR_WIDTH = 24

STATE_TEXT = {
    "running": "đang chạy / running", "paused": "tạm dừng / paused", "completed": "hoàn tất / completed",
    "aborted": "đã huỷ / aborted", "stopped": "đã dừng: bản phát hành bị thu hồi / stopped: release withdrawn",
}
FINAL_STATES = ("completed", "aborted", "stopped")
# A receiver's update, grouped as the progress line counts it.
UPDATING = ("offered", "downloading", "downloaded", "verified", "deferred", "installing", "rebooting")
FAILED = ("failed", "rolled_back")
TARGET_TEXT = {
    "pending": "chờ / pending", "offered": "đã gửi / offered", "downloading": "đang tải / downloading",
    "downloaded": "đã tải / downloaded", "verified": "đã kiểm tra / verified", "deferred": "chờ hết phát / deferred",
    "installing": "đang cài / installing", "rebooting": "khởi động lại / rebooting",
    "confirmed": "xác nhận / confirmed", "failed": "lỗi / failed", "rolled_back": "quay về bản cũ / rolled back",
    "cancelled": "huỷ / cancelled", "skipped": "bỏ qua / skipped",
}


def _count(counts: dict[str, int], states: tuple[str, ...]) -> int:
    return sum(counts.get(s, 0) for s in states)


def wave_line(wave: dict[str, Any], current: int) -> str:
    """One wave: a bar (█ confirmed, ✗ failed, ▒ updating, ░ waiting) and the counts."""
    counts, size = wave["counts"], max(wave["size"], 0)
    confirmed, failed = counts.get("confirmed", 0), _count(counts, FAILED)
    updating, pending = _count(counts, UPDATING), counts.get("pending", 0)
    cells = []
    if size:
        for n, mark in ((confirmed, "█"), (failed, "✗"), (updating, "▒")):
            cells.append(mark * round(BAR_WIDTH * n / size))
    bar = "".join(cells)[:BAR_WIDTH].ljust(BAR_WIDTH, "░")
    marker = "▶" if wave["wave"] == current else " "
    line = (f"{marker} đợt / wave {wave['wave'] + 1:>2} [{bar}] {confirmed}/{size} xác nhận / confirmed, "
            f"{failed} lỗi / failed, {updating} đang cập nhật / updating, {pending} chờ / pending")
    others = _count(counts, ("cancelled",))
    if others:
        line += f", {others} huỷ / cancelled"
    return line


def window_text(window: dict[str, Any] | None) -> str:
    if not window:
        return "mọi lúc / any time"
    text = f"{window['start']}–{window['end']}"
    if window.get("days", ALL_DAYS) != ALL_DAYS:
        text += f" ({', '.join(days_of(window['days']))})"
    return text


def rollout_lines(rollout: dict[str, Any]) -> list[str]:
    lines = [
        f"Đợt cập nhật / rollout {rollout['id']} \"{rollout['name']}\": {rollout['version']} ({rollout['hardware']}) "
        f"— {STATE_TEXT.get(rollout['state'], rollout['state'])}",
        f"  tạo bởi / by {rollout['creator_name']} {local_text(parse_time(rollout['created_at']))}; "
        f"máy thu / receivers: {rollout['target_summary']}; "
        f"khung giờ / window: {window_text(rollout['window'])}; "
        f"{rollout['per_minute']} máy/phút / a minute",
    ]
    if rollout["state_reason"]:
        lines.append(f"  lý do / reason: {rollout['state_reason']}")
    if rollout["finished_at"]:
        lines.append(f"  kết thúc / ended {local_text(parse_time(rollout['finished_at']))}")
    lines += [wave_line(w, rollout["current_wave"]) for w in rollout["progress"]]
    skipped = rollout["counts"].get("skipped", 0)
    if skipped:
        lines.append(f"  bỏ qua / skipped: {skipped} (đã chạy bản này hoặc không hợp / run it already, or may not take it)")
    return lines


def _window(text: str, days: str | None) -> dict[str, Any]:
    start, sep, end = text.partition("-")
    if not sep:
        raise typer.BadParameter(f"'{text}': HH:MM-HH:MM, e.g. 22:00-04:00")
    window: dict[str, Any] = {"start": start.strip(), "end": end.strip()}
    if days:
        names = [d.strip().lower() for d in days.split(",") if d.strip()]
        unknown = [d for d in names if d not in DAY_NAMES]
        if unknown or not names:
            raise typer.BadParameter(f"'{days}': ngày trong tuần / days of the week, e.g. mon,wed,sat "
                                     f"({','.join(DAY_NAMES)})", param_hint="--days")
        window["days"] = sum(1 << DAY_NAMES.index(d) for d in set(names))
    return window


@rollouts_app.command("create")
def create(
    release: Annotated[int, typer.Option("--release", help="Mã bản phát hành / release id (loa firmware list)")],
    name: Annotated[str | None, typer.Option(help="Tên / name (default: the release's version)")] = None,
    region: Annotated[int | None, typer.Option(help="Một đơn vị và các đơn vị con / a region subtree id")] = None,
    station: Annotated[int | None, typer.Option(help="Một đài / a station id")] = None,
    receivers: Annotated[str | None, typer.Option(help="Danh sách thiết bị / receiver ids, comma-separated")] = None,
    from_version: Annotated[str | None, typer.Option(help="Chỉ máy đang chạy bản này / only receivers "
                                                          "running this version")] = None,
    waves: Annotated[str, typer.Option(help="Các đợt / waves: counts or percentages, e.g. 3,10%,100%")] = "3,10%,100%",
    window: Annotated[str | None, typer.Option(help="Khung giờ bảo trì / maintenance window, local time, "
                                                    "e.g. 22:00-04:00 (default: any time)")] = None,
    days: Annotated[str | None, typer.Option(help="Các ngày khung giờ mở / days the window opens, "
                                                  "e.g. mon,wed,sat (default: every day)")] = None,
    success: Annotated[int, typer.Option(help="% xác nhận để sang đợt sau / % confirmed before the next wave")] = 90,
    error: Annotated[int, typer.Option(help="% lỗi thì tự tạm dừng / % failed that pauses the rollout")] = 20,
    min_finished: Annotated[int, typer.Option(help="Số máy xong tối thiểu để xét ngưỡng / finished receivers "
                                                   "before the thresholds apply")] = 5,
    per_minute: Annotated[int, typer.Option(help="Số máy mỗi phút / offers a minute")] = 60,
    jitter: Annotated[int, typer.Option(help="Trễ ngẫu nhiên trước khi tải (giây) / random delay before "
                                             "downloading (s)")] = 30,
    step_timeout: Annotated[int, typer.Option(help="Quá thời gian mỗi bước (giây) / seconds a receiver may "
                                                   "stay in one step")] = 1800,
    force: Annotated[bool, typer.Option("--force", help="Cho phép hạ phiên bản / allow a downgrade")] = False,
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Tạo đợt cập nhật / create a rollout: the release is offered wave by wave (a canary
    first) by the running service. Without --region, --station or --receivers: every receiver
    of your region."""
    target: dict[str, Any] = {"region_id": region, "station_id": station, "from_version": from_version,
                              "receiver_ids": [r.strip() for r in receivers.split(",") if r.strip()] if receivers else None}
    body: dict[str, Any] = {
        "name": name or f"release {release}", "release_id": release,
        "target": {k: v for k, v in target.items() if v is not None},
        "waves": [w.strip() for w in waves.split(",") if w.strip()], "success_percent": success,
        "error_percent": error, "min_finished": min_finished, "per_minute": per_minute, "jitter_s": jitter,
        "step_timeout_s": step_timeout, "force": force}
    if days and not window:
        raise typer.BadParameter("--days cần --window / --days needs --window", param_hint="--days")
    if window:
        body["window"] = _window(window, days)
    with cli_support.client(api, token) as client:
        rollout = cli_support.call(client, "POST", "/rollouts", json=body)
    for line in rollout_lines(rollout):
        typer.echo(line)
    typer.echo(f"Theo dõi / follow it: loa rollouts show {rollout['id']} --watch")


@rollouts_app.command("list")
def list_rollouts(
    state: Annotated[list[str] | None, typer.Option(help="running | paused | completed | aborted | stopped")] = None,
    limit: int = 50, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Các đợt cập nhật / rollouts that reach your region, newest first."""
    with cli_support.client(api, token) as client:
        rows = cli_support.call(client, "GET", "/rollouts", params={"state": state or [], "limit": limit})
    if not rows:
        typer.echo("Không có đợt cập nhật nào / no rollouts")
        return
    print_table(["id", "tên / name", "bản / version", "trạng thái / state", "đợt / wave", "xác nhận / confirmed",
                 "lỗi / failed", "tạo lúc / created"],
                [[r["id"], r["name"], r["version"], r["state"], f"{r['current_wave'] + 1}/{len(r['progress'])}",
                  f"{r['counts'].get('confirmed', 0)}/{sum(w['size'] for w in r['progress'])}",
                  _count(r["counts"], FAILED), local_text(parse_time(r["created_at"]))] for r in rows])


@rollouts_app.command("show")
def show(
    rollout_id: int,
    watch: Annotated[bool, typer.Option("--watch", help="Theo dõi trực tiếp đến khi kết thúc (Ctrl-C để thôi) / "
                                                        "follow live until it ends (Ctrl-C to stop)")] = False,
    targets: Annotated[bool, typer.Option("--targets", help="Từng máy thu / each receiver")] = False,
    state: Annotated[str | None, typer.Option(help="Chỉ máy ở trạng thái này (--targets) / only receivers in "
                                                   "this state")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Tiến độ một đợt cập nhật / a rollout's progress, wave by wave."""
    with cli_support.client(api, token) as client:
        if watch:
            _watch(client, rollout_id)
            return
        rollout = cli_support.call(client, "GET", f"/rollouts/{rollout_id}")
        for line in rollout_lines(rollout):
            typer.echo(line)
        if targets or state:
            params = {"state": state} if state else {}
            rows = cli_support.call(client, "GET", f"/rollouts/{rollout_id}/targets", params=params)
            print_table(["máy thu / receiver", "đợt / wave", "trạng thái / state", "%", "lý do / reason",
                         "lần / attempts", "lúc / at"],
                        [[t["receiver_id"], t["wave"] + 1, TARGET_TEXT.get(t["state"], t["state"]), t["percent"],
                          t["reason"], t["attempts"], local_text(parse_time(t["state_at"]))] for t in rows])


def _watch(client: Any, rollout_id: int) -> None:
    """The progress redrawn in place every WATCH_INTERVAL_S (printed anew when not a terminal,
    only when it changed) until the rollout ends, or Ctrl-C."""
    live = sys.stdout.isatty()
    drawn: list[str] = []
    try:
        while True:
            rollout = cli_support.call(client, "GET", f"/rollouts/{rollout_id}")
            lines = rollout_lines(rollout)
            if lines != drawn:
                if live and drawn:
                    typer.echo(f"\033[{len(drawn)}F\033[J", nl=False)
                for line in lines:
                    typer.echo(line)
                drawn = lines
            if rollout["state"] in FINAL_STATES:
                return
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        typer.echo("Đã thôi theo dõi; đợt cập nhật vẫn chạy trong dịch vụ / stopped watching; the rollout goes on "
                   "in the service")


def _act(rollout_id: int, verb: str, api: str, token: str, reason: str | None = None) -> dict[str, Any]:
    body = {"reason": reason} if reason else None
    with cli_support.client(api, token) as client:
        return cli_support.call(client, "POST", f"/rollouts/{rollout_id}/{verb}", json=body)


Reason = Annotated[str | None, typer.Option(help="Lý do / reason")]


@rollouts_app.command("pause")
def pause(rollout_id: int, reason: Reason = None, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Tạm dừng / pause: nothing more is offered; receivers already offered carry on."""
    rollout = _act(rollout_id, "pause", api, token, reason)
    typer.echo(f"Đã tạm dừng / paused rollout {rollout['id']}: {rollout['state_reason']}")


@rollouts_app.command("resume")
def resume(rollout_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Tiếp tục / resume a paused rollout."""
    rollout = _act(rollout_id, "resume", api, token)
    typer.echo(f"Đã tiếp tục / resumed rollout {rollout['id']} ({STATE_TEXT[rollout['state']]})")


@rollouts_app.command("abort")
def abort(rollout_id: int, reason: Reason = None, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Huỷ / abort for good: receivers not offered yet are cancelled."""
    rollout = _act(rollout_id, "abort", api, token, reason)
    typer.echo(f"Đã huỷ / aborted rollout {rollout['id']}: {rollout['state_reason']}; "
               f"{rollout['counts'].get('cancelled', 0)} máy chưa gửi bị huỷ / receivers not offered cancelled")


@rollouts_app.command("retry")
def retry(rollout_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Cập nhật lại máy lỗi / offer the release again to the failed and rolled-back receivers."""
    answer = _act(rollout_id, "retry", api, token)
    typer.echo(f"{answer['retried']} máy sẽ được gửi lại / receivers will be offered again "
               f"(rollout {answer['rollout']['id']}, {STATE_TEXT[answer['rollout']['state']]})")
