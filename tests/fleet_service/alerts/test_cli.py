"""``loa incidents``, ``loa silences``, ``loa alerts``, ``loa crews`` from a terminal against a
running API (uvicorn) on a real database: incidents listed and filtered, acknowledged and
resolved (and refused to a viewer and to another province), silences for a while or until a
local time, a region's rules set and reset with where each value comes from, crews with their
members' channels shown without secrets, and bad input refused with a clear message."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from click.testing import CliRunner
from typer.main import get_command

from fleet_service.alerts.cli import duration_text, incident_lines, parse_duration, subject_text
from fleet_service.alerts.evaluator import evaluate_once
from fleet_service.alerts.models import Incident
from fleet_service.alerts.notify import Planner
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.cli import app as loa
from fleet_service.config import Settings
from fleet_service.db import utcnow
from fleet_service.migrations import upgrade
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.runtime import Runtime
from fleet_service.timefmt import LOCAL_ZONE, local_text
from fleet_service.uptime.models import ReceiverLiveState
from tests.fleet_service.firmware.test_cli import ServedApi
from tests.support.fleet import SmallFleet, provision_fleet

# Credentials in channels: none may appear in any output.
MAIL = "mailto://doi1:matkhau-bi-mat@mail.example.vn?to=doi1@example.vn"
TELEGRAM = "tgram://123456789:AAHbimat-token-telegram/987654"


# ``loa`` as click sees it, built once: typer builds it anew at every invocation (0.4 s here).
LOA = get_command(loa)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(LOA, list(args), prog_name="loa")
    return result.exit_code, result.output


@dataclass
class Served:
    url: str
    runtime: Runtime
    fleet: SmallFleet
    tokens: dict[str, str]
    incidents: dict[str, Incident]  # by kind, as raised

    def api(self, who: str) -> tuple[str, ...]:
        return ("--api", self.url, "--token", self.tokens[who])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One API for the module: a commune whose rx-0 is offline and rx-1's amplifier failing,
    both raised; an operator, a technician and a viewer of the commune, a technician of
    another province, a whole-fleet admin."""
    url = f"sqlite:///{tmp_path_factory.mktemp('alerts-cli') / 'loa.db'}"
    upgrade(url)
    runtime = Runtime.from_settings(Settings(database_url=url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=4, stations=2)
    with runtime.sessions.begin() as session:
        other = registry.create_region(session, RegionCreate(name="Bắc Kạn", level="tỉnh")).id
        now = utcnow()
        for rid in fleet.credentials:
            session.add(ReceiverLiveState(receiver_id=rid, online=rid != "rx-0", heard_at=now - timedelta(hours=1),
                                          telemetry_at=now, updated_at=now,
                                          amplifier="fault" if rid == "rx-1" else "on", stream="playing"))
        tokens = {}
        for name, role, region in (("admin", Role.ADMIN, None), ("doi.ky.thuat", Role.OPERATOR, fleet.region_id),
                                   ("kythuat", Role.TECHNICIAN, fleet.region_id), ("bac.kan", Role.TECHNICIAN, other),
                                   ("xem", Role.VIEWER, fleet.region_id)):
            user = auth.create_user(session, name, role=role, region_id=region)
            tokens[name] = auth.issue_token(session, user.id, "cli")[1]
    evaluate_once(runtime.sessions)
    evaluate_once(runtime.sessions, utcnow() + timedelta(minutes=6))
    with runtime.sessions.begin() as session:
        incidents = {i.kind: i for i in session.scalars(select(Incident))}
        session.expunge_all()
    assert set(incidents) == {"offline", "amp_fault"}
    try:
        with ServedApi(runtime) as served_url:
            yield Served(served_url, runtime, fleet, tokens, incidents)
    finally:
        runtime.close()


def test_incidents_listed_filtered_and_shown(served: Served) -> None:
    offline, amp = served.incidents["offline"], served.incidents["amp_fault"]
    code, output = run("incidents", "list", *served.api("doi.ky.thuat"))
    assert code == 0, output
    lines = {line.split()[0]: line for line in output.splitlines()[2:]}
    assert set(lines) == {str(offline.id), str(amp.id)}
    assert re.search(rf"^{amp.id}\s+critical\s+amp_fault\s+rx-1\s+open\s+{re.escape(local_text(amp.started_at))}\s+"
                     r"Lỗi bộ khuếch đại / Amplifier fault: rx-1 \(Đài 1, Hùng Sơn\)", lines[str(amp.id)]), output
    assert "major" in lines[str(offline.id)] and "rx-0" in lines[str(offline.id)]
    assert "tóm tắt / summary" in output.splitlines()[0]
    for args, expected in ((("--kind", "amp_fault"), {amp.id}), (("--receiver", "rx-0"), {offline.id}),
                           (("--station", str(served.fleet.station_of("rx-1"))), {amp.id}),
                           (("--kind", "offline", "--kind", "amp_fault", "--state", "open", "--members"),
                            {offline.id, amp.id})):
        code, output = run("incidents", "list", *args, *served.api("xem"))
        assert code == 0 and {int(line.split()[0]) for line in output.splitlines()[2:]} == expected, (args, output)
    code, output = run("incidents", "list", "--state", "resolved", *served.api("xem"))
    assert code == 0 and output.startswith("Không có sự cố nào / no incidents (resolved)")
    code, output = run("incidents", "list", *served.api("bac.kan"))
    assert code == 0 and "no incidents" in output
    code, output = run("incidents", "list", "--kind", "mat_dien", *served.api("xem"))
    assert code == 2 and "Lỗi: --kind 'mat_dien': không có loại cảnh báo này" in output
    assert "Error: --kind 'mat_dien': no such alert rule" in output
    assert "offline, silent, amp_fault" in output
    code, output = run("incidents", "list", "--state", "closed", *served.api("xem"))
    assert code == 2 and "open | acknowledged | resolved" in output

    code, output = run("incidents", "show", str(offline.id), *served.api("xem"))
    assert code == 0, output
    assert output.startswith(f"Sự cố / incident {offline.id}: Mất kết nối / Offline — lớn / major — đang mở / open")
    assert f"bắt đầu / started {local_text(offline.started_at)}" in output
    assert f"đối tượng / subject: rx-0, đài / station {served.fleet.station_of('rx-0')}" in output
    assert "kiểm tra trước / check first: Kiểm tra nguồn điện của trạm và sóng 4G" in output
    assert "no notifications" in output
    code, output = run("incidents", "show", str(offline.id), *served.api("bac.kan"))
    assert code == 1 and f"no incident {offline.id}" in output
    code, output = run("incidents", "show", str(offline.id), "--api", served.url, "--token", "not-a-token")
    assert code == 1 and "the API token is not valid" in output


def test_incidents_acknowledged_and_resolved_by_the_communes_crew_only(served: Served) -> None:
    amp = served.incidents["amp_fault"]
    code, output = run("incidents", "ack", str(amp.id), *served.api("xem"))
    assert code == 1 and "may not do this" in output and "không được làm việc này" in output
    code, output = run("incidents", "ack", str(amp.id), *served.api("bac.kan"))
    assert code == 1 and f"no incident {amp.id}" in output
    code, output = run("incidents", "ack", str(amp.id), "--note", "đang tới / on the way", *served.api("doi.ky.thuat"))
    assert code == 0, output
    assert output.startswith(f"Đã nhận / acknowledged incident {amp.id} (Lỗi bộ khuếch đại / Amplifier fault, rx-1): "
                             "doi.ky.thuat ")
    code, output = run("incidents", "list", "--state", "open", *served.api("doi.ky.thuat"))
    assert code == 0 and str(amp.id) not in {line.split()[0] for line in output.splitlines()[2:]}
    code, output = run("incidents", "resolve", str(amp.id), "--note", "thay cầu chì / fuse replaced",
                       *served.api("doi.ky.thuat"))
    assert code == 0 and f"Đã đóng / resolved incident {amp.id}" in output
    code, output = run("incidents", "resolve", str(amp.id), *served.api("doi.ky.thuat"))
    assert code == 1 and f"incident {amp.id} is resolved already" in output
    code, output = run("incidents", "show", str(amp.id), *served.api("xem"))
    assert code == 0 and "đã đóng / resolved: doi.ky.thuat" in output and "đã nhận / acknowledged: doi.ky.thuat" in output
    assert "ghi chú / note: thay cầu chì / fuse replaced" in output and "check first" not in output
    code, output = run("incidents", "list", "--state", "resolved", *served.api("xem"))
    assert code == 0 and re.search(rf"^{amp.id}\s+critical\s+amp_fault\s+rx-1\s+resolved", output, re.M), output


def test_silences_for_a_while_or_until_a_local_time_and_ended(served: Served) -> None:
    station = served.fleet.station_of("rx-1")
    code, output = run("silences", "add", "--station", str(station), "--reason", "thay cột loa", "--for", "2h",
                       *served.api("doi.ky.thuat"))
    assert code == 1 and "may not do this" in output  # operators do not silence
    code, output = run("silences", "add", "--station", str(station), "--reason", "thay cột loa", "--for", "2h",
                       *served.api("bac.kan"))
    assert code == 1 and f"Station {station} not found" in output  # out of its region: as if it did not exist
    before = datetime.now(LOCAL_ZONE)
    code, output = run("silences", "add", "--station", str(station), "--reason", "thay cột loa", "--for", "2h",
                       *served.api("kythuat"))
    assert code == 0, output
    match = re.search(r"đến / until (\S+ \S+): silence (\d+)$", output.strip())
    assert match and f"Đã tạm im / silenced đài / station {station} (mọi loại / every rule)" in output
    until = datetime.strptime(match.group(1), "%d/%m/%Y %H:%M:%S").replace(tzinfo=LOCAL_ZONE)
    assert timedelta(hours=2) - timedelta(seconds=2) <= until - before <= timedelta(hours=2, seconds=5)
    by_station = int(match.group(2))
    tomorrow = (datetime.now(LOCAL_ZONE) + timedelta(days=1)).replace(hour=17, minute=30, second=0, microsecond=0)
    code, output = run("silences", "add", "--receiver", "rx-2", "--kind", "offline", "--kind", "silent",
                       "--reason", "bảo trì / maintenance", "--until", tomorrow.strftime("%Y-%m-%d %H:%M"),
                       *served.api("kythuat"))
    assert code == 0, output
    assert f"máy thu / receiver rx-2 (offline, silent)" in output
    assert f"đến / until {tomorrow.strftime('%d/%m/%Y')} 17:30:00" in output
    by_receiver = int(output.strip().rsplit(" ", 1)[1])
    for args, problem in ((("--for", "2x"), "a duration such as 90s, 5m, 2h, 1d, 1h30m"),
                          (("--for", "2h", "--until", "2030-01-01 08:00"), "either --until or --for"),
                          (("--until", "ngày mai"), 'Vietnam time as "YYYY-MM-DD HH:MM"'),
                          (("--for", "2h", "--kind", "flood"), "no such alert rule"),
                          (("--for", "2h", "--region", "1"), "exactly one of --receiver, --station, --region")):
        code, output = run("silences", "add", "--station", str(station), "--reason", "x", *args, *served.api("kythuat"))
        assert code == 2 and problem in output, (args, output)
    code, output = run("silences", "add", "--station", str(station), "--reason", "x", "--until", "2020-01-01 08:00",
                       *served.api("kythuat"))
    assert code == 1 and "the silence would end in the past" in output
    code, output = run("silences", "list", *served.api("xem"))
    assert code == 0, output
    assert [int(line.split()[0]) for line in output.splitlines()[2:]] == [by_station, by_receiver]
    assert "thay cột loa" in output and "kythuat" in output and "offline, silent" in output
    code, output = run("silences", "end", str(by_station), *served.api("kythuat"))
    assert code == 0 and output.startswith(f"Đã kết thúc / ended silence {by_station} (đài / station {station})")
    code, output = run("silences", "list", *served.api("xem"))
    assert code == 0 and [int(line.split()[0]) for line in output.splitlines()[2:]] == [by_receiver]
    code, output = run("silences", "list", "--ended", *served.api("xem"))
    assert code == 0 and "(đã hết / ended)" in output and len(output.splitlines()) == 4
    code, output = run("silences", "end", str(by_receiver), *served.api("bac.kan"))
    assert code == 1 and f"no silence {by_receiver}" in output
    code, output = run("silences", "end", str(by_receiver), *served.api("kythuat"))
    assert code == 0


def _rule_line(output: str, kind: str) -> str:
    return next(line for line in output.splitlines() if line.startswith(kind + " "))


def test_a_regions_rules_set_shown_with_their_source_and_reset(served: Served) -> None:
    region = str(served.fleet.region_id)
    code, output = run("alerts", "rules", "--region", region, *served.api("xem"))
    assert code == 0, output
    assert re.match(r"overheat\s+major\s+5m\s+5m\s+0\s+70 °C\s+bật / on$", _rule_line(output, "overheat"))
    assert re.match(r"silent\s+minor\s+0\s+2m\s+1m30s\s+600 s\s+bật / on$", _rule_line(output, "silent"))
    assert "unmarked: mặc định / the default" in output
    code, output = run("alerts", "set", "overheat", "--region", region, "--threshold", "80", "--severity", "critical",
                       "--pending", "1h30m", "--group-wait", "2m", "--disable", *served.api("kythuat"))
    assert code == 0, output
    assert re.search(rf"overheat\s+critical \[{region}\]\s+1h30m \[{region}\]\s+5m\s+2m \[{region}\]\s+"
                     rf"80 °C \[{region}\]\s+tắt / off \[{region}\]", output), output
    code, output = run("alerts", "set", "overheat", "--hold", "10m", *served.api("kythuat"))
    assert code == 1 and "only a whole-fleet admin sets the service-wide rules" in output
    code, output = run("alerts", "set", "weak_signal", "--hold", "20m", *served.api("admin"))
    assert code == 0 and "toàn hệ thống / service-wide" in output
    code, output = run("alerts", "rules", "--region", region, *served.api("doi.ky.thuat"))
    assert code == 0 and re.match(r"weak_signal\s+minor\s+15m\s+20m \[0\]\s+0\s+-105 dBm", _rule_line(output, "weak_signal"))
    assert f"1h30m [{region}]" in _rule_line(output, "overheat")
    code, output = run("alerts", "rules", "--region", region, *served.api("bac.kan"))
    assert code == 1 and f"Region {region} not found" in output
    for args, problem in ((("flood", "--region", region, "--hold", "1m"), "no such alert rule"),
                          (("overheat", "--region", region, "--pending", "5 phút"), "a duration such as"),
                          (("overheat", "--region", region, "--severity", "urgent"), "critical | major | minor"),
                          (("overheat", "--region", region), "nothing to set")):
        code, output = run("alerts", "set", *args, *served.api("kythuat"))
        assert code == 2 and problem in output, (args, output)
    code, output = run("alerts", "set", "channel_failed", "--hold", "1m", *served.api("admin"))
    assert code == 2 and "'channel_failed': no such alert rule" in output  # raised by the notifier, not by a rule
    code, output = run("alerts", "set", "offline", "--region", region, "--threshold", "5", *served.api("kythuat"))
    assert code == 1 and "the rule offline has no threshold" in output
    code, output = run("alerts", "reset", "overheat", "--region", region, *served.api("kythuat"))
    assert code == 0 and re.match(r"overheat\s+major\s+5m\s+5m\s+0\s+70 °C\s+bật / on$", _rule_line(output, "overheat"))
    code, output = run("alerts", "reset", "weak_signal", *served.api("admin"))
    assert code == 0 and re.match(r"weak_signal\s+minor\s+15m\s+10m\s+0\s+-105 dBm", _rule_line(output, "weak_signal"))


def test_a_crew_made_its_members_channels_shown_without_secrets(served: Served) -> None:
    region = str(served.fleet.region_id)
    code, output = run("crews", "list", *served.api("xem"))
    assert code == 0 and "no crews yet" in output
    # The rota began before the incident was raised: its first member is on call for it, and now.
    began = (datetime.now(LOCAL_ZONE) - timedelta(days=1)).replace(hour=8, minute=0, second=0, microsecond=0)
    code, output = run("crews", "create", "--name", "Đội Hùng Sơn", "--region", region, "--rotation-days", "3",
                       "--rotation-start", began.strftime("%Y-%m-%d %H:%M"),
                       "--reminder", "30", "--escalation", "0:on_call, 20:engineers", *served.api("kythuat"))
    assert code == 0, output
    assert output.startswith(f'Đội / crew 1 "Đội Hùng Sơn" — đơn vị / region {region}')
    assert "báo / escalation: +0′ người trực / on call, +20′ kỹ sư / engineers" in output
    assert f"luân phiên / rotation: 3 ngày / days từ / from {began.strftime('%d/%m/%Y')} 08:00:00" in output
    assert "nhắc lại / reminders: mỗi / every 30 phút / min" in output
    for args, code_, problem in ((("--region", region, "--escalation", "0:boss"), 2, "MINUTES:WHO"),
                                 (("--region", region, "--fleet"), 2, "either --region N or --fleet"),
                                 (("--fleet",), 1, "only a whole-fleet admin makes the service's crew")):
        code, output = run("crews", "create", "--name", "x", *args, *served.api("kythuat"))
        assert code == code_ and problem in output, (args, output)
    code, output = run("crews", "add-member", "1", "--name", "Anh Tuấn", "--channel", MAIL, "--channel", TELEGRAM,
                       *served.api("kythuat"))
    assert code == 0 and output.startswith('Đã thêm / added member 1 "Anh Tuấn" to crew 1: mailto://'), output
    code, output = run("crews", "add-member", "1", "--name", "Chị Lan", "--channel", "mailto://lan@example.vn",
                       "--position", "1", *served.api("kythuat"))
    assert code == 0, output
    code, output = run("crews", "add-member", "1", "--name", "Kỹ sư Hà", "--channel", "json://hooks.example.vn/zalo",
                       "--engineer", *served.api("kythuat"))
    assert code == 0, output
    code, output = run("crews", "add-member", "1", "--name", "x", "--channel", "khong-phai-kenh", *served.api("kythuat"))
    assert code == 1 and "not a channel apprise can send to" in output
    code, output = run("crews", "add-member", "1", "--name", "x", "--channel", MAIL, *served.api("doi.ky.thuat"))
    assert code == 1 and "may not do this" in output
    code, output = run("crews", "show", "1", *served.api("xem"))
    assert code == 0, output
    assert "đang trực / on call: Anh Tuấn" in output
    assert re.search(r"^1\s+Anh Tuấn\s+0\s+trực / rota\s+mailto://.*tgram://.*có / yes$", output, re.M), output
    assert re.search(r"^3\s+Kỹ sư Hà\s+0\s+kỹ sư / engineer\s+json://hooks.example.vn", output, re.M), output
    code, listed = run("crews", "list", *served.api("doi.ky.thuat"))
    assert code == 0 and re.search(rf"^1\s+Đội Hùng Sơn\s+{region}\s+Anh Tuấn\s+3\s+3 ngày", listed, re.M), listed
    code, none = run("crews", "list", *served.api("bac.kan"))
    assert code == 0 and "no crews yet" in none
    # The worker plans the messages for the open incident: who is told, on which channel.
    with served.runtime.sessions.begin() as session:
        assert Planner(session, utcnow() + timedelta(minutes=7)).run() == 2
    offline = served.incidents["offline"]
    code, shown = run("incidents", "show", str(offline.id), *served.api("doi.ky.thuat"))
    assert code == 0 and "Thông báo / notifications:" in shown, shown
    assert len(re.findall(r"báo / raised\s+Anh Tuấn\s+(mailto|tgram)://\S+\s+chờ gửi / pending\s+0", shown)) == 2
    code, removed = run("crews", "remove-member", "1", "2", *served.api("kythuat"))
    assert code == 0 and removed.startswith('Đã gỡ / removed member 2 "Chị Lan" from crew 1')
    code, output_after = run("crews", "show", "1", *served.api("xem"))
    assert code == 0 and re.search(r"^2\s+Chị Lan\s+1\s+trực / rota\s+\S+\s+đã gỡ / removed$", output_after, re.M)
    code, gone = run("crews", "remove-member", "1", "9", *served.api("kythuat"))
    assert code == 1 and "no member 9 in crew 1" in gone
    for text in (output, listed, shown, output_after):
        assert "matkhau-bi-mat" not in text and "AAHbimat-token-telegram" not in text


def test_durations_read_and_written_alike() -> None:
    for text, seconds in (("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45),
                          ("0", 0)):
        assert parse_duration(text, "--for") == seconds
        assert parse_duration(duration_text(seconds), "--for") == seconds
    assert duration_text(5400) == "1h30m" and duration_text(300) == "5m"


def test_a_grouped_incident_names_its_commune_and_receivers() -> None:
    group = {"id": 7, "kind": "offline", "severity": "major", "scope": "region", "receiver_id": None,
             "station_id": None, "region_id": 3, "state": "open", "parent_id": None, "suppressed_by": None,
             "summary": "Mất kết nối / Offline: 3/4 máy thu ở / receivers in Hùng Sơn", "value": None,
             "detail": {"receivers": ["rx-0", "rx-1", "rx-2"], "of": 4}, "started_at": "2026-12-01T01:00:00+00:00",
             "opened_at": "2026-12-01T01:05:00+00:00", "acknowledged_at": None, "acknowledged_by": None,
             "resolved_at": "2026-12-01T02:00:00+00:00", "resolved_by": None, "note": None}
    lines = incident_lines({**group, "state": "resolved"})
    assert "  đối tượng / subject: xã / commune 3" in lines
    assert "  máy thu / receivers (3/4): rx-0, rx-1, rx-2" in lines
    assert "  bắt đầu / started 01/12/2026 08:00:00; báo / raised 01/12/2026 08:05:00" in lines
    assert "  đã đóng / resolved: tự hết / cleared by itself 01/12/2026 09:00:00" in lines
    member = {**group, "scope": "receiver", "receiver_id": "rx-1", "station_id": 2, "parent_id": 7, "detail": None}
    assert subject_text(member) == "rx-1" and subject_text({**group, "scope": "station", "station_id": 2}) == \
        "đài / station 2"
    assert "  thuộc sự cố nhóm / part of grouped incident 7 (loa incidents show 7)" in incident_lines(member)
