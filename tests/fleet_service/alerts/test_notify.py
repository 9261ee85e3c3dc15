"""Telling the crews, through a real SMTP server and a real webhook receiver: exactly one message
per incident and channel, escalation when nobody acknowledges, nothing after the one-tap
acknowledge link (which works once), the resolution told to those told, nothing sent twice
across a restart, one message for a commune-wide outage, retries of a channel that fails."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update

from fleet_service.alerts.evaluator import evaluate_once
from fleet_service.alerts.models import Incident, Notification
from fleet_service.alerts.notify import NOTIFY_GIVE_UP, Notifier, redacted
from fleet_service.auth.models import Role
from fleet_service.db import utcnow
from fleet_service.registry.models import Station
from fleet_service.uptime.models import ConnectivityInterval, ReceiverLiveState
from tests.fleet_service.auth.world import World, ok, running_api
from tests.support.fleet import SmallFleet, provision_fleet
from tests.support.inboxes import MailInbox, WebhookInbox, mail_inbox, webhook_inbox

API = "/api/v1"


@dataclass
class Setup:
    world: World
    fleet: SmallFleet
    mail: MailInbox
    hooks: WebhookInbox
    engineer: dict[str, str]
    t0: datetime

    def notifier(self) -> Notifier:
        """A worker's notifier; a new one is a restarted worker."""
        return Notifier(self.world.runtime.sessions, self.world.runtime.settings)

    def evaluate(self, minutes: float) -> None:
        """One evaluation; the receivers online have just reported."""
        at = self.t0 + timedelta(minutes=minutes)
        with self.world.session() as session:
            session.execute(update(ReceiverLiveState).where(ReceiverLiveState.online.is_(True))
                            .values(heard_at=at, telemetry_at=at))
        evaluate_once(self.world.runtime.sessions, at)

    def set_online(self, receiver_id: str, online: bool, minutes: float) -> None:
        at = self.t0 + timedelta(minutes=minutes)
        with self.world.session() as session:
            row = session.get(ReceiverLiveState, receiver_id)
            assert row is not None
            row.online, row.heard_at, row.telemetry_at = online, at, at
            if not online:
                session.add(ConnectivityInterval(receiver_id=receiver_id, station_id=self.fleet.station_of(receiver_id),
                                                 state="offline", start_at=at, start_cause="will"))

    def get_incidents(self, headers: dict[str, str]):  # type: ignore[no-untyped-def]
        return self.world.client.get(f"{API}/incidents", headers=headers)

    def incidents(self) -> list[Incident]:
        with self.world.session() as session:
            found = list(session.scalars(select(Incident).order_by(Incident.id)))
            session.expunge_all()
        return found


@pytest.fixture
def setup(db_url: str) -> Iterator[Setup]:
    t0 = utcnow()
    with running_api(db_url) as world, mail_inbox() as mail, webhook_inbox() as hooks:
        fleet = provision_fleet(world.runtime.sessions, receivers=4, stations=2)
        with world.session() as session:
            station = session.get(Station, fleet.station_of("rx-0"))
            assert station is not None
            station.latitude, station.longitude = 21.7001, 105.8012
            for rid in fleet.credentials:  # all well, heard just now
                session.add(ReceiverLiveState(receiver_id=rid, online=True, heard_at=t0, telemetry_at=t0, updated_at=t0,
                                              amplifier="on", stream="playing"))
        engineer = world.user("kythuat", Role.TECHNICIAN, fleet.region_id)
        crew = ok(world.client.post(f"{API}/crews", headers=engineer, json={
            "name": "Đội Hùng Sơn", "region_id": fleet.region_id,
            "rotation_start": (t0 - timedelta(days=1)).isoformat()}), 201)
        for name, position, engineer_flag, channels in (
                ("An", 0, False, [mail.url("an@example.com"), hooks.url("an")]),
                ("Bình", 1, False, [hooks.url("binh")]),
                ("Chi", 0, True, [hooks.url("chi")])):
            ok(world.client.post(f"{API}/crews/{crew['id']}/members", headers=engineer, json={
                "name": name, "position": position, "engineer": engineer_flag, "channels": channels}), 201)
        yield Setup(world, fleet, mail, hooks, engineer, t0)


def ack_link(text: str) -> str:
    found = re.search(r"http://\S+/api/v1/ack/(\S+)", text)
    assert found, text
    return found.group(1)


def test_one_message_escalation_the_link_and_the_resolution(setup: Setup) -> None:
    crew, = ok(setup.world.client.get(f"{API}/crews", headers=setup.engineer))
    assert crew["on_call"] == "An" and crew["escalation"][1] == {"after_min": 15, "to": "next"}
    assert crew["members"][0]["channels"] == [f"mailto://127.0.0.1:{setup.mail.port}/an%40example.com",
                                              f"json://127.0.0.1:{setup.hooks.port}/an"]
    setup.set_online("rx-0", False, -10)
    setup.evaluate(0)
    incident, = setup.incidents()
    notifier = setup.notifier()
    notifier.turn(setup.t0)
    mail, = setup.mail.to("an@example.com")
    assert mail.subject.startswith("NẶNG / MAJOR Mất kết nối / Offline: rx-0")
    assert "Ở đâu / where: Đài 0, Hùng Sơn — https://www.openstreetmap.org/?mlat=21.70010&mlon=105.80120" in mail.body
    assert "Kiểm tra trước / check first: Kiểm tra nguồn điện của trạm" in mail.body
    hook, = setup.hooks.to("an")
    assert hook["title"] == mail.subject and "Sự cố / incident #" in hook["message"]
    assert setup.hooks.to("binh") == [] and setup.hooks.to("chi") == []
    notifier.turn(setup.t0 + timedelta(minutes=1))
    assert (len(setup.mail.mails), len(setup.hooks.posts)) == (1, 1)

    restarted = setup.notifier()  # the worker restarts; 16 minutes on, nobody has acknowledged
    restarted.turn(setup.t0 + timedelta(minutes=16))
    escalated, = setup.hooks.to("binh")
    assert escalated["title"].startswith("[Chưa ai nhận / not acknowledged] NẶNG / MAJOR")
    assert (len(setup.mail.mails), len(setup.hooks.to("an"))) == (1, 1)

    token = ack_link(mail.body)
    page = setup.world.client.get(f"{API}/ack/{token}")  # a preview bot opening it changes nothing
    assert page.status_code == 200 and "I am on it" in page.text and setup.incidents()[0].state == "open"
    done = setup.world.client.post(f"{API}/ack/{token}")
    assert done.status_code == 200 and "Đã nhận / acknowledged" in done.text
    incident, = setup.incidents()
    assert (incident.state, incident.acknowledged_by) == ("acknowledged", "An (link)")
    again = setup.world.client.post(f"{API}/ack/{token}")
    assert again.status_code == 409 and again.json()["error"]["message_en"] == "this link has been used already"
    browser = setup.world.client.post(f"{API}/ack/{token}", headers={"Accept": "text/html,*/*"})
    assert browser.status_code == 409 and "<p>this link has been used already</p>" in browser.text
    assert setup.world.client.post(f"{API}/ack/{token[:-2]}xx").status_code == 404
    restarted.turn(setup.t0 + timedelta(minutes=31))
    assert setup.hooks.to("chi") == []  # acknowledged: no escalation to the engineer

    setup.set_online("rx-0", True, 40)
    setup.evaluate(40)
    setup.evaluate(44)
    assert setup.incidents()[0].state == "resolved"
    restarted.turn(setup.t0 + timedelta(minutes=44))
    restarted.turn(setup.t0 + timedelta(minutes=45))
    resolved_mail = setup.mail.to("an@example.com")[1]
    assert resolved_mail.subject.startswith("[Đã hết / resolved]") and "/ack/" not in resolved_mail.body
    assert [len(setup.mail.mails), len(setup.hooks.to("an")), len(setup.hooks.to("binh")), len(setup.hooks.to("chi"))] == [2, 2, 2, 0]
    sent = ok(setup.world.client.get(f"{API}/incidents/{incident.id}/notifications", headers=setup.engineer))
    assert [n["state"] for n in sent] == ["sent"] * 6
    assert sum(n["acknowledged_with_link"] for n in sent) == 1


def test_a_commune_wide_outage_is_one_message(setup: Setup) -> None:
    for rid in setup.fleet.credentials:
        setup.set_online(rid, False, -10)
    setup.evaluate(0)
    setup.notifier().turn(setup.t0)
    hook, = setup.hooks.to("an")
    assert "4/4 máy thu ở / receivers in Hùng Sơn" in hook["message"] and "likely a power or 4G cell outage" in hook["message"]
    assert len(setup.mail.to("an@example.com")) == 1


def test_a_silenced_station_tells_nobody_even_of_what_was_raised_before(setup: Setup) -> None:
    setup.set_online("rx-0", False, -10)
    setup.set_online("rx-2", False, -10)  # the same station
    setup.evaluate(0)
    notifier = setup.notifier()
    notifier.turn(setup.t0)
    assert len(setup.hooks.to("an")) == 2  # both raised before the silence
    ok(setup.world.client.post(f"{API}/silences", headers=setup.engineer, json={
        "station_id": setup.fleet.station_of("rx-0"), "reason": "thay cột loa / new pole",
        "starts_at": setup.t0.isoformat(), "ends_at": (setup.t0 + timedelta(hours=3)).isoformat()}), 201)
    setup.set_online("rx-1", True, 1)
    for minute in (16, 31):  # no escalation of either while it lasts
        notifier.turn(setup.t0 + timedelta(minutes=minute))
    assert len(setup.hooks.posts) == 2 and setup.hooks.to("binh") == []


def test_a_critical_incident_is_told_again_until_acknowledged(setup: Setup) -> None:
    with setup.world.session() as session:
        row = session.get(ReceiverLiveState, "rx-1")
        assert row is not None
        row.amplifier = "fault"
    setup.evaluate(0)
    setup.evaluate(1)
    notifier = setup.notifier()
    for minute in (1, 30, 62, 63):
        notifier.turn(setup.t0 + timedelta(minutes=minute))
    titles = [h["title"] for h in setup.hooks.to("an")]
    assert titles[0].startswith("KHẨN / CRITICAL Lỗi bộ khuếch đại / Amplifier fault: rx-1")
    assert [t.split("]")[0] for t in titles[1:]] == ["[Nhắc lại / reminder"]


def test_a_channel_that_fails_is_retried_with_backoff_then_given_up(setup: Setup) -> None:
    setup.hooks.failing = True
    setup.set_online("rx-0", False, -10)
    setup.evaluate(0)
    notifier = setup.notifier()
    notifier.turn(setup.t0)
    with setup.world.session() as session:
        hook = session.scalar(select(Notification).where(Notification.recipient == "An", Notification.channel.like("json:%")))
        assert hook is not None and hook.state == "pending" and hook.attempts == 1 and hook.last_error
        assert hook.available_at - setup.t0 >= timedelta(seconds=5)
    notifier.turn(setup.t0 + timedelta(seconds=2))  # not due yet
    for n in range(1, NOTIFY_GIVE_UP + 2):
        notifier.turn(setup.t0 + timedelta(minutes=11 * n))
    with setup.world.session() as session:
        states = {(n.recipient, n.channel.split(":")[0]): (n.state, n.attempts)
                  for n in session.scalars(select(Notification).where(Notification.reason == "raised"))}
    assert states[("An", "json")] == ("failed", NOTIFY_GIVE_UP)
    assert states[("An", "mailto")] == ("sent", 1)  # the other channel was not held back
    assert setup.hooks.posts == []
    # The channel's own incident, for the whole service's admins.
    # (Bình's and Chi's channels, escalated to meanwhile, failed the same way.)
    channel, = [i for i in setup.incidents() if i.kind == "channel_failed" and i.summary.endswith("/an")]
    assert (channel.scope, channel.state, channel.region_path) == ("service", "open", "/")
    assert channel.summary == f"Kênh thông báo không gửi được / Notification channel failing: An — " \
                              f"json://127.0.0.1:{setup.hooks.port}/an"
    admin = setup.world.user("quantri", Role.ADMIN)
    failing_channels = sum(i.kind == "channel_failed" for i in setup.incidents())
    assert [i["kind"] for i in ok(setup.get_incidents(admin))].count("channel_failed") == failing_channels
    assert [i["kind"] for i in ok(setup.get_incidents(setup.engineer))].count("channel_failed") == 0
    # It works again: the next message through it resolves the channel's incident.
    setup.hooks.failing = False
    setup.set_online("rx-1", False, 200)
    setup.evaluate(210)
    notifier.turn(setup.t0 + timedelta(minutes=210))
    assert len(setup.hooks.to("an")) == 1
    assert channel.id in [i.id for i in setup.incidents() if i.state == "resolved"]


def test_channels_are_shown_without_their_secrets() -> None:
    assert redacted("mailto://doi:matkhau-bi-mat@mail.example.vn:587?to=an@example.com") == \
        "mailto://doi:****@mail.example.vn:587/an%40example.com"
    assert "ABCDEFsecret" not in redacted("tgram://123456:ABCDEFsecret/987654")
    assert redacted("not a channel").startswith("? (kênh không hợp lệ")


def test_a_member_with_a_channel_apprise_cannot_send_to_is_refused(setup: Setup) -> None:
    crew, = ok(setup.world.client.get(f"{API}/crews", headers=setup.engineer))
    bad = setup.world.client.post(f"{API}/crews/{crew['id']}/members", headers=setup.engineer,
                                  json={"name": "Dũng", "channels": ["zalo-please://0912345678"]})
    assert bad.status_code == 422 and "not a channel apprise can send to" in bad.text


def test_before_its_rotation_starts_the_first_member_is_on_call() -> None:
    from fleet_service.alerts.models import Crew, CrewMember
    from fleet_service.alerts.notify import on_call

    start = utcnow()
    crew = Crew(rotation_start=start, rotation_days=7)
    members = [CrewMember(id=i, name=name, position=i, engineer=False, active=True) for i, name in enumerate("ABC")]
    assert on_call(crew, members, start - timedelta(days=3)).name == "A"  # type: ignore[union-attr]
    assert on_call(crew, members, start + timedelta(days=8)).name == "B"  # type: ignore[union-attr]
    assert on_call(crew, members, start + timedelta(days=15), offset=1).name == "A"  # type: ignore[union-attr]
