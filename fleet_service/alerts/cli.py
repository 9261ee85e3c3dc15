"""``loa incidents``, ``loa silences``, ``loa alerts``, ``loa crews``: alerts from a terminal.

These talk to the running service's API (LOA_API_URL, LOA_API_TOKEN), as ``loa rollouts``
does: the token decides which incidents, silences, rules and crews the caller sees and may
change, exactly as on the API. Times are Vietnam time (Asia/Ho_Chi_Minh), given and shown;
durations are written 90s, 5m, 2h, 1d or together (1h30m)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer

from fleet_service import cli_support
from fleet_service.alerts.rules import CHECK_FIRST, DEFAULT_RULES, TITLES, RuleKind, Severity
from fleet_service.cli_support import ApiUrl, Token, parse_time, print_table
from fleet_service.timefmt import LOCAL_ZONE, local_text

incidents_app = typer.Typer(no_args_is_help=True)
silences_app = typer.Typer(no_args_is_help=True)
alerts_app = typer.Typer(no_args_is_help=True)
crews_app = typer.Typer(no_args_is_help=True)

STATES = ("open", "acknowledged", "resolved")
STATE_TEXT = {"open": "đang mở / open", "acknowledged": "đã nhận / acknowledged", "resolved": "đã đóng / resolved"}
SEVERITY_TEXT = {"critical": "nghiêm trọng / critical", "major": "lớn / major", "minor": "nhỏ / minor"}
NOTIFICATION_TEXT = {"pending": "chờ gửi / pending", "sent": "đã gửi / sent", "failed": "lỗi / failed",
                     "cancelled": "huỷ / cancelled"}
REASON_TEXT = {"raised": "báo / raised", "escalated": "báo tiếp / escalated", "reminder": "nhắc / reminder",
               "resolved": "đã đóng / resolved"}
STEP_TEXT = {"on_call": "người trực / on call", "next": "người trực kế / next on call",
             "engineers": "kỹ sư / engineers", "all": "cả đội / everyone"}
# What a rule's threshold is measured in (alerts/rules.py).
THRESHOLD_UNIT: dict[str, str] = {RuleKind.SILENT: "s", RuleKind.OVERHEAT: "°C", RuleKind.LOW_SUPPLY: "V",
                                  RuleKind.WEAK_SIGNAL: "dBm", RuleKind.CLOCK_UNSYNCED: "s",
                                  RuleKind.REBOOTS: "/h", RuleKind.UNDERRUNS: "/h", RuleKind.DATA_BUDGET: "MB"}
RULE_FIELDS = ("severity", "pending_s", "hold_s", "group_wait_s", "threshold", "enabled")
# The longest silence, pending or hold-down time anyone means: beyond it a typo is likelier.
DURATION_MAX_S = 366 * 86400


def usage(vi: str, en: str) -> typer.Exit:
    """Bad input: said on standard error in both languages; exit code 2, as click's own."""
    return cli_support.error(vi, en, 2)


_DURATION = re.compile(r"(\d+)([dhms])")
_DURATION_TEXT = re.compile(r"(?:\d+[dhms])+")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str, option: str) -> int:
    """``90s``, ``5m``, ``2h``, ``1d``, ``1h30m`` (a bare number: seconds) in seconds."""
    compact = text.strip().lower().replace(" ", "")
    if compact.isdigit():
        seconds = int(compact)
    elif _DURATION_TEXT.fullmatch(compact):
        seconds = sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(compact))
    else:
        raise usage(f"{option} '{text}': cần thời lượng như 90s, 5m, 2h, 1d, 1h30m",
                    f"{option} '{text}': a duration such as 90s, 5m, 2h, 1d, 1h30m is needed")
    if seconds > DURATION_MAX_S:
        raise usage(f"{option} '{text}': dài quá một năm", f"{option} '{text}': longer than a year")
    return seconds


def duration_text(seconds: int) -> str:
    """300 → 5m, 5400 → 1h30m, 0 → 0: as ``parse_duration`` reads it back."""
    if seconds == 0:
        return "0"
    parts = []
    for unit, size in _UNIT_S.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parse_local(text: str, option: str) -> datetime:
    """``YYYY-MM-DD HH:MM`` in Vietnam time (an explicit offset is kept)."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise usage(f"{option} '{text}': cần giờ Việt Nam dạng \"YYYY-MM-DD HH:MM\"",
                    f"{option} '{text}': Vietnam time as \"YYYY-MM-DD HH:MM\" is needed") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=LOCAL_ZONE)


def _kind(text: str, option: str = "KIND", *, rules_only: bool = False) -> RuleKind:
    """A kind of incident; with ``rules_only``, one that has a rule to set (not every kind does:
    a failing notification channel is raised by the notifier, not by a rule)."""
    known = list(DEFAULT_RULES) if rules_only else list(RuleKind)
    kind = _known_kind(text.strip().lower())
    if kind is None or kind not in known:
        kinds = ", ".join(k.value for k in known)
        raise usage(f"{option} '{text}': không có loại cảnh báo này; các loại: {kinds}",
                    f"{option} '{text}': no such alert rule; the rules are: {kinds}")
    return kind


def _known_kind(text: str) -> RuleKind | None:
    """The kind the API named; None for one this command does not know (a newer service)."""
    try:
        return RuleKind(text)
    except ValueError:
        return None


def _local(text: str | None) -> str:
    return local_text(parse_time(text)) if text else "—"


def _title(kind: str) -> str:
    known = _known_kind(kind)
    vi, en = TITLES.get(known, (kind, kind)) if known is not None else (kind, kind)
    return f"{vi} / {en}"


# --- incidents --------------------------------------------------------------------------------

def subject_text(incident: dict[str, Any]) -> str:
    """What failed: a receiver, or a station or commune for a grouped incident."""
    if incident["scope"] == "station":
        return f"đài / station {incident['station_id']}"
    if incident["scope"] == "region":
        return f"xã / commune {incident['region_id']}"
    if incident["receiver_id"] is None:
        return "dịch vụ / the service"
    return str(incident["receiver_id"])


def _state_cell(incident: dict[str, Any]) -> str:
    state = incident["state"]
    suppressed = incident["suppressed_by"] or ""
    if incident["parent_id"] is not None:
        return f"{state} (∈ #{incident['parent_id']})"
    if suppressed.startswith("silence:") and state != "resolved":
        return f"{state} (tạm im / silenced)"
    return state


@incidents_app.command("list")
def incidents_list(
    state: Annotated[list[str] | None, typer.Option(help="open | acknowledged | resolved, có thể lặp / repeatable "
                                                         "(mặc định / default: open và / and acknowledged)")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Loại / rule: offline, amp_fault, ... (repeatable)")] = None,
    receiver: Annotated[str | None, typer.Option(help="Một thiết bị / one receiver id")] = None,
    station: Annotated[int | None, typer.Option(help="Một đài / a station id")] = None,
    members: Annotated[bool, typer.Option("--members", help="Cả các sự cố thành phần của sự cố nhóm / also the "
                                                            "members of grouped incidents")] = False,
    limit: Annotated[int, typer.Option(help="Nhiều nhất / at most")] = 100,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Sự cố / incidents in your region, newest first; by default those not resolved yet."""
    states = list(state) if state else ["open", "acknowledged"]
    bad = [s for s in states if s not in STATES]
    if bad:
        raise usage(f"--state '{bad[0]}': chỉ {' | '.join(STATES)}", f"--state '{bad[0]}': one of {' | '.join(STATES)}")
    params: dict[str, Any] = {"state": states, "kind": [_kind(k, "--kind").value for k in kind or []],
                              "members": members, "limit": limit}
    if receiver is not None:
        params["receiver_id"] = receiver
    if station is not None:
        params["station_id"] = station
    with cli_support.client(api, token) as client:
        rows = cli_support.call(client, "GET", "/incidents", params=params)
    if not rows:
        typer.echo(f"Không có sự cố nào / no incidents ({', '.join(states)})")
        return
    print_table(["id", "mức / severity", "loại / rule", "đối tượng / subject", "trạng thái / state",
                 "từ / since", "tóm tắt / summary"],
                [[i["id"], i["severity"], i["kind"], subject_text(i), _state_cell(i), _local(i["started_at"]),
                  i["summary"]] for i in rows])


def incident_lines(incident: dict[str, Any]) -> list[str]:
    lines = [f"Sự cố / incident {incident['id']}: {_title(incident['kind'])} — "
             f"{SEVERITY_TEXT.get(incident['severity'], incident['severity'])} — "
             f"{STATE_TEXT.get(incident['state'], incident['state'])}",
             f"  {incident['summary']}"]
    where = [subject_text(incident)]
    if incident["scope"] == "receiver":
        where += [f"đài / station {incident['station_id']}" if incident["station_id"] else None,
                  f"đơn vị / region {incident['region_id']}" if incident["region_id"] else None]
    lines.append(f"  đối tượng / subject: {', '.join(w for w in where if w)}")
    detail = incident["detail"] or {}
    if detail.get("receivers"):
        lines.append(f"  máy thu / receivers ({len(detail['receivers'])}/{detail.get('of', '?')}): "
                     f"{', '.join(detail['receivers'])}")
    if incident["value"] is not None:
        lines.append(f"  giá trị / value: {incident['value']}")
    lines.append(f"  bắt đầu / started {_local(incident['started_at'])}; báo / raised {_local(incident['opened_at'])}")
    suppressed = incident["suppressed_by"] or ""
    if suppressed.startswith("silence:"):
        lines.append(f"  không báo ai: đang tạm im / nobody told: silence {suppressed.split(':', 1)[1]} "
                     f"(loa silences list)")
    elif incident["parent_id"] is not None:
        lines.append(f"  thuộc sự cố nhóm / part of grouped incident {incident['parent_id']} "
                     f"(loa incidents show {incident['parent_id']})")
    if incident["acknowledged_at"]:
        lines.append(f"  đã nhận / acknowledged: {incident['acknowledged_by']} {_local(incident['acknowledged_at'])}")
    if incident["resolved_at"]:
        by = incident["resolved_by"] or "tự hết / cleared by itself"
        lines.append(f"  đã đóng / resolved: {by} {_local(incident['resolved_at'])}")
    if incident["note"]:
        lines.append(f"  ghi chú / note: {incident['note']}")
    known = _known_kind(incident["kind"])
    check = CHECK_FIRST.get(known) if known is not None else None
    if incident["state"] != "resolved" and check is not None:
        vi, en = check
        lines.append(f"  kiểm tra trước / check first: {vi} / {en}")
    return lines


def _notification_state(notification: dict[str, Any]) -> str:
    text = NOTIFICATION_TEXT.get(notification["state"], str(notification["state"]))
    if notification["acknowledged_with_link"]:
        text += " (đã nhận qua liên kết / acknowledged by its link)"
    return text


@incidents_app.command("show")
def incidents_show(incident_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Một sự cố và các thông báo đã gửi / one incident and the notifications sent for it."""
    with cli_support.client(api, token) as client:
        incident = cli_support.call(client, "GET", f"/incidents/{incident_id}")
        sent = cli_support.call(client, "GET", f"/incidents/{incident_id}/notifications")
    for line in incident_lines(incident):
        typer.echo(line)
    if not sent:
        typer.echo("Chưa có thông báo nào / no notifications")
        return
    typer.echo("Thông báo / notifications:")
    print_table(["id", "vì / reason", "người nhận / recipient", "kênh / channel", "trạng thái / state",
                 "lần / attempts", "gửi lúc / sent", "lỗi / error"],
                [[n["id"], REASON_TEXT.get(n["reason"], n["reason"]), n["recipient"], n["channel"],
                  _notification_state(n),
                  n["attempts"], _local(n["sent_at"]), n["last_error"]] for n in sent])


Note = Annotated[str | None, typer.Option(help="Ghi chú / note: what is being done, or what was done")]


def _act(incident_id: int, verb: str, note: str | None, api: str, token: str) -> dict[str, Any]:
    with cli_support.client(api, token) as client:
        return cli_support.call(client, "POST", f"/incidents/{incident_id}/{verb}", json={"note": note})


@incidents_app.command("ack")
def incidents_ack(incident_id: int, note: Note = None, api: ApiUrl = cli_support.DEFAULT_API_URL,
                  token: Token = "") -> None:
    """Xác nhận đã nhận / acknowledge: someone is on it; reminders and escalation stop."""
    incident = _act(incident_id, "acknowledge", note, api, token)
    typer.echo(f"Đã nhận / acknowledged incident {incident['id']} ({_title(incident['kind'])}, "
               f"{subject_text(incident)}): {incident['acknowledged_by']} {_local(incident['acknowledged_at'])}")


@incidents_app.command("resolve")
def incidents_resolve(incident_id: int, note: Note = None, api: ApiUrl = cli_support.DEFAULT_API_URL,
                      token: Token = "") -> None:
    """Đóng sự cố / resolve by hand; a fault that still holds raises nothing new until it clears."""
    incident = _act(incident_id, "resolve", note, api, token)
    typer.echo(f"Đã đóng / resolved incident {incident['id']} ({_title(incident['kind'])}, "
               f"{subject_text(incident)}): {incident['resolved_by']} {_local(incident['resolved_at'])}")


# --- silences ---------------------------------------------------------------------------------

def _silence_subject(silence: dict[str, Any]) -> str:
    if silence["receiver_id"] is not None:
        return f"máy thu / receiver {silence['receiver_id']}"
    if silence["station_id"] is not None:
        return f"đài / station {silence['station_id']}"
    return f"đơn vị / region {silence['region_id']}"


def _kinds_text(kinds: list[str] | None) -> str:
    return ", ".join(kinds) if kinds else "mọi loại / every rule"


@silences_app.command("list")
def silences_list(
    ended: Annotated[bool, typer.Option("--ended", help="Cả lệnh đã hết / also those that have ended")] = False,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Tạm im / silences in your region (planned work): incidents still recorded, nobody told."""
    with cli_support.client(api, token) as client:
        rows = cli_support.call(client, "GET", "/silences", params={"ended": ended})
    if not rows:
        typer.echo("Không có lệnh tạm im nào / no silences")
        return
    now = datetime.now(LOCAL_ZONE)
    print_table(["id", "đối tượng / subject", "loại / rules", "từ / from", "đến / until", "người đặt / by",
                 "lý do / reason"],
                [[s["id"], _silence_subject(s), _kinds_text(s["kinds"]), _local(s["starts_at"]),
                  _local(s["ends_at"]) + (" (đã hết / ended)" if parse_time(s["ends_at"]) <= now else ""),
                  s["created_by"], s["reason"]] for s in rows])


@silences_app.command("add")
def silences_add(
    reason: Annotated[str, typer.Option(help="Lý do / reason, e.g. thay cột loa / new pole")],
    receiver: Annotated[str | None, typer.Option(help="Một thiết bị / one receiver id")] = None,
    station: Annotated[int | None, typer.Option(help="Một đài / a station id")] = None,
    region: Annotated[int | None, typer.Option(help="Một đơn vị và các đơn vị con / a region subtree id")] = None,
    until: Annotated[str | None, typer.Option(help="Đến / until, giờ Việt Nam / Vietnam time: "
                                                   "\"YYYY-MM-DD HH:MM\"")] = None,
    for_: Annotated[str | None, typer.Option("--for", help="Trong / for: 90m, 2h, 1d")] = None,
    start: Annotated[str | None, typer.Option(help="Bắt đầu / from, \"YYYY-MM-DD HH:MM\" "
                                                   "(mặc định / default: now)")] = None,
    kind: Annotated[list[str] | None, typer.Option(help="Chỉ loại này / only this rule, repeatable "
                                                        "(mặc định / default: every rule)")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Tạm im / silence a receiver, a station or a region for planned work."""
    if sum(x is not None for x in (receiver, station, region)) != 1:
        raise usage("cần đúng một trong --receiver, --station, --region",
                    "exactly one of --receiver, --station, --region is needed")
    if (until is None) == (for_ is None):
        raise usage("cần --until hoặc --for (một trong hai)", "either --until or --for is needed")
    starts = parse_local(start, "--start") if start is not None else None
    if until is not None:
        ends = parse_local(until, "--until")
    else:
        assert for_ is not None
        ends = (starts or datetime.now(LOCAL_ZONE)) + timedelta(seconds=parse_duration(for_, "--for"))
    body: dict[str, Any] = {"receiver_id": receiver, "station_id": station, "region_id": region, "reason": reason,
                            "ends_at": ends.isoformat()}
    if starts is not None:
        body["starts_at"] = starts.isoformat()
    if kind:
        body["kinds"] = sorted({_kind(k, "--kind").value for k in kind})
    with cli_support.client(api, token) as client:
        silence = cli_support.call(client, "POST", "/silences", json=body)
    typer.echo(f"Đã tạm im / silenced {_silence_subject(silence)} ({_kinds_text(silence['kinds'])}) "
               f"từ / from {_local(silence['starts_at'])} đến / until {_local(silence['ends_at'])}: "
               f"silence {silence['id']}")


@silences_app.command("end")
def silences_end(silence_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Kết thúc tạm im ngay / end a silence now."""
    with cli_support.client(api, token) as client:
        silence = cli_support.call(client, "DELETE", f"/silences/{silence_id}")
    typer.echo(f"Đã kết thúc / ended silence {silence['id']} ({_silence_subject(silence)}) "
               f"lúc / at {_local(silence['ends_at'])}")


# --- rules ------------------------------------------------------------------------------------

def _source_mark(source: str) -> str:
    return "" if source == "default" else f" [{source}]"


def _value_cells(rule: dict[str, Any]) -> list[str]:
    source, unit = rule["source"], THRESHOLD_UNIT.get(rule["kind"], "")
    threshold = "—" if rule["threshold"] is None else f"{rule['threshold']:g} {unit}".rstrip()
    values = {"severity": rule["severity"], "pending_s": duration_text(rule["pending_s"]),
              "hold_s": duration_text(rule["hold_s"]), "group_wait_s": duration_text(rule["group_wait_s"]),
              "threshold": threshold,
              "enabled": "bật / on" if rule["enabled"] else "tắt / off"}
    return [values[name] + _source_mark(source.get(name, "default")) for name in RULE_FIELDS]


RULE_HEADERS = ["loại / rule", "mức / severity", "chờ / pending", "giữ / hold", "chờ nhóm / group wait",
                "ngưỡng / threshold", "bật / enabled"]
RULE_LEGEND = ("[0]: đặt cho toàn hệ thống / set service-wide; [N]: đặt cho đơn vị / set for region N; "
               "không đánh dấu / unmarked: mặc định / the default")


@alerts_app.command("rules")
def alerts_rules(
    region: Annotated[int | None, typer.Option(help="Quy tắc của đơn vị này / this region's rules "
                                                    "(mặc định / default: service-wide)")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Quy tắc cảnh báo / the alert rules in force, and where each value comes from."""
    params = {"region_id": region} if region is not None else {}
    with cli_support.client(api, token) as client:
        rules = cli_support.call(client, "GET", "/alert-rules", params=params)
    print_table(RULE_HEADERS, [[r["kind"], *_value_cells(r)] for r in rules])
    typer.echo(RULE_LEGEND)


def _print_rule(rule: dict[str, Any], region: int | None) -> None:
    where = f"đơn vị / region {region}" if region is not None else "toàn hệ thống / service-wide"
    typer.echo(f"Quy tắc / rule {rule['kind']} ({_title(rule['kind'])}), {where}:")
    print_table(RULE_HEADERS, [[rule["kind"], *_value_cells(rule)]])
    typer.echo(RULE_LEGEND)


@alerts_app.command("set")
def alerts_set(
    kind: Annotated[str, typer.Argument(help="Loại / rule: " + ", ".join(k.value for k in RuleKind))],
    region: Annotated[int | None, typer.Option(help="Đơn vị / region id (mặc định / default: service-wide, "
                                                    "whole-fleet admins only)")] = None,
    severity: Annotated[str | None, typer.Option(help="critical | major | minor")] = None,
    pending: Annotated[str | None, typer.Option(help="Chờ trước khi báo / how long before telling: 5m")] = None,
    hold: Annotated[str | None, typer.Option(help="Hết lỗi bao lâu thì tự đóng / cleared for how long before "
                                                  "it closes: 3m")] = None,
    group_wait: Annotated[str | None, typer.Option(help="Chờ thêm để gộp với máy lân cận / how long a receiver's "
                                                        "own incident waits for its neighbours to make a group: 90s")] = None,
    threshold: Annotated[float | None, typer.Option(help="Ngưỡng / threshold (°C, V, dBm, s)")] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable", help="Bật hoặc tắt / turn on or off")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Đặt quy tắc / set some of a rule's values for a region; the rest still come from above."""
    rule_kind = _kind(kind, rules_only=True)
    body: dict[str, Any] = {}
    if severity is not None:
        if severity not in Severity._value2member_map_:
            raise usage(f"--severity '{severity}': chỉ critical | major | minor",
                        f"--severity '{severity}': one of critical | major | minor")
        body["severity"] = severity
    if pending is not None:
        body["pending_s"] = parse_duration(pending, "--pending")
    if hold is not None:
        body["hold_s"] = parse_duration(hold, "--hold")
    if group_wait is not None:
        body["group_wait_s"] = parse_duration(group_wait, "--group-wait")
    if threshold is not None:
        body["threshold"] = threshold
    if enabled is not None:
        body["enabled"] = enabled
    if not body:
        raise usage("không có gì để đặt: --severity, --pending, --hold, --group-wait, --threshold, --enable hoặc "
                    "--disable",
                    "nothing to set: --severity, --pending, --hold, --group-wait, --threshold, --enable or --disable")
    params = {"region_id": region} if region is not None else {}
    with cli_support.client(api, token) as client:
        rule = cli_support.call(client, "PUT", f"/alert-rules/{rule_kind.value}", json=body, params=params)
    _print_rule(rule, region)


@alerts_app.command("reset")
def alerts_reset(
    kind: Annotated[str, typer.Argument(help="Loại / rule")],
    region: Annotated[int | None, typer.Option(help="Đơn vị / region id (mặc định / default: service-wide)")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Bỏ giá trị riêng / the region takes the rule from the region above (or the default) again."""
    rule_kind = _kind(kind, rules_only=True)
    params = {"region_id": region} if region is not None else {}
    with cli_support.client(api, token) as client:
        rule = cli_support.call(client, "DELETE", f"/alert-rules/{rule_kind.value}", params=params)
    _print_rule(rule, region)


# --- crews ------------------------------------------------------------------------------------

def parse_escalation(text: str) -> list[dict[str, Any]]:
    """``0:on_call,15:next,30:engineers``: minutes after the incident was raised, and who."""
    steps = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        minutes, sep, to = part.partition(":")
        if not sep or not minutes.strip().isdigit() or to.strip() not in STEP_TEXT:
            raise usage(f"--escalation '{part}': cần PHÚT:AI, AI là {' | '.join(STEP_TEXT)}; "
                        f"ví dụ 0:on_call,15:next,30:engineers",
                        f"--escalation '{part}': MINUTES:WHO is needed, WHO being {' | '.join(STEP_TEXT)}; "
                        f"e.g. 0:on_call,15:next,30:engineers")
        steps.append({"after_min": int(minutes), "to": to.strip()})
    if not steps:
        raise usage("--escalation: ví dụ 0:on_call,15:next,30:engineers",
                    "--escalation: e.g. 0:on_call,15:next,30:engineers")
    return steps


def _escalation_text(steps: list[dict[str, Any]]) -> str:
    return ", ".join(f"+{s['after_min']}′ {STEP_TEXT.get(s['to'], s['to'])}" for s in steps)


def _crew_region(crew: dict[str, Any]) -> str:
    return f"đơn vị / region {crew['region_id']}" if crew["region_id"] is not None else "toàn hệ thống / service-wide"


def crew_lines(crew: dict[str, Any]) -> list[str]:
    reminder = (f"mỗi / every {crew['reminder_min']} phút / min (nghiêm trọng / critical)" if crew["reminder_min"]
                else "không / none")
    return [f"Đội / crew {crew['id']} \"{crew['name']}\" — {_crew_region(crew)}",
            f"  đang trực / on call: {crew['on_call'] or '— (chưa có ai / nobody yet)'}; "
            f"luân phiên / rotation: {crew['rotation_days']} ngày / days từ / from {_local(crew['rotation_start'])}",
            f"  báo / escalation: {_escalation_text(crew['escalation'])}",
            f"  nhắc lại / reminders: {reminder}"]


def _member_rows(members: list[dict[str, Any]]) -> list[list[object]]:
    return [[m["id"], m["name"], m["position"], "kỹ sư / engineer" if m["engineer"] else "trực / rota",
             ", ".join(m["channels"]), "có / yes" if m["active"] else "đã gỡ / removed"] for m in members]


MEMBER_HEADERS = ["id", "tên / name", "thứ tự / position", "vai / role", "kênh / channels", "còn / active"]


@crews_app.command("list")
def crews_list(api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Đội bảo trì / maintenance crews of your region, and who is on call now."""
    with cli_support.client(api, token) as client:
        crews = cli_support.call(client, "GET", "/crews")
    if not crews:
        typer.echo("Chưa có đội nào / no crews yet (loa crews create)")
        return
    print_table(["id", "tên / name", "đơn vị / region", "đang trực / on call", "thành viên / members",
                 "luân phiên / rotation"],
                [[c["id"], c["name"], c["region_id"] if c["region_id"] is not None else "toàn hệ thống / all",
                  c["on_call"], sum(1 for m in c["members"] if m["active"]), f"{c['rotation_days']} ngày / d"]
                 for c in crews])


@crews_app.command("show")
def crews_show(crew_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "") -> None:
    """Một đội: thành viên, kênh báo (không lộ mật khẩu) / a crew: members and their channels (no secrets)."""
    with cli_support.client(api, token) as client:
        crew = cli_support.call(client, "GET", f"/crews/{crew_id}")
    for line in crew_lines(crew):
        typer.echo(line)
    if crew["members"]:
        print_table(MEMBER_HEADERS, _member_rows(crew["members"]))
    else:
        typer.echo(f"Chưa có thành viên / no members yet (loa crews add-member {crew['id']})")


@crews_app.command("create")
def crews_create(
    name: Annotated[str, typer.Option(help="Tên / name")],
    region: Annotated[int | None, typer.Option(help="Đơn vị / region id: told of its incidents that no crew "
                                                    "further down takes")] = None,
    fleet: Annotated[bool, typer.Option("--fleet", help="Đội chung của toàn hệ thống / the whole service's crew "
                                                        "(whole-fleet admins)")] = False,
    rotation_days: Annotated[int, typer.Option(help="Mỗi người trực bao nhiêu ngày / days each turn on call")] = 7,
    rotation_start: Annotated[str | None, typer.Option(help="Lượt trực đầu bắt đầu lúc / when the first turn began, "
                                                            "\"YYYY-MM-DD HH:MM\" (mặc định / default: now)")] = None,
    reminder: Annotated[int, typer.Option(help="Nhắc sự cố nghiêm trọng mỗi (phút; 0: không) / remind of a critical "
                                               "incident every (min; 0: never)")] = 60,
    escalation: Annotated[str | None, typer.Option(help="PHÚT:AI,... / MINUTES:WHO,... e.g. "
                                                        "0:on_call,15:next,30:engineers (the default)")] = None,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Lập đội / create a maintenance crew for a region."""
    if (region is None) == (not fleet):
        raise usage("cần --region N hoặc --fleet (một trong hai)", "give either --region N or --fleet")
    body: dict[str, Any] = {"name": name, "region_id": region, "rotation_days": rotation_days,
                            "reminder_min": reminder}
    if escalation is not None:
        body["escalation"] = parse_escalation(escalation)
    if rotation_start is not None:
        body["rotation_start"] = parse_local(rotation_start, "--rotation-start").isoformat()
    with cli_support.client(api, token) as client:
        crew = cli_support.call(client, "POST", "/crews", json=body)
    for line in crew_lines(crew):
        typer.echo(line)
    typer.echo(f"Thêm người / add people: loa crews add-member {crew['id']} --name TÊN --channel mailto://...")


@crews_app.command("add-member")
def crews_add_member(
    crew_id: int,
    name: Annotated[str, typer.Option(help="Tên / name")],
    channel: Annotated[list[str], typer.Option(help="Kênh báo / where they are told, apprise URL, repeatable: "
                                                    "mailto://, tgram://, json:// (Zalo, SMS gateway), smpp://")],
    position: Annotated[int, typer.Option(help="Thứ tự trong lượt trực / place in the rotation")] = 0,
    engineer: Annotated[bool, typer.Option("--engineer", help="Kỹ sư: được báo khi leo thang, không trực / an "
                                                              "engineer: told on escalation, not on the rota")] = False,
    api: ApiUrl = cli_support.DEFAULT_API_URL, token: Token = "",
) -> None:
    """Thêm thành viên / add a member and the channels they are told on."""
    body = {"name": name, "channels": channel, "position": position, "engineer": engineer}
    with cli_support.client(api, token) as client:
        member = cli_support.call(client, "POST", f"/crews/{crew_id}/members", json=body)
    typer.echo(f"Đã thêm / added member {member['id']} \"{member['name']}\" to crew {crew_id}: "
               f"{', '.join(member['channels'])}")


@crews_app.command("remove-member")
def crews_remove_member(crew_id: int, member_id: int, api: ApiUrl = cli_support.DEFAULT_API_URL,
                        token: Token = "") -> None:
    """Gỡ thành viên / remove a member (kept in the record of who was told)."""
    with cli_support.client(api, token) as client:
        member = cli_support.call(client, "DELETE", f"/crews/{crew_id}/members/{member_id}")
    typer.echo(f"Đã gỡ / removed member {member['id']} \"{member['name']}\" from crew {crew_id}")
