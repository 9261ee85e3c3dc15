"""Check 2: a CONNECT under a connected receiver's client id that the broker refuses must leave
that receiver alone: no take-over, no reset of its session, no Will of its own or of the
attacker's. The same against the service's own client id: test_service_client_id.py."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.broker.security.scenario import (
    carrying,
    deliver_command,
    marker,
    online_receiver,
    retained,
    state,
    tag,
    topic,
)
from tests.support.broker_backends import ServiceBackend
from tests.support.mqtt_clients import Clients, MqttClient, Will

ATTACKER_ADDRESS = "127.0.0.2"

# (A's id, A's password, B's id) -> the attacker's username and password
Login = Callable[[str, str, str], tuple[str | None, str | None]]
LOGINS: dict[str, Login] = {
    "no-credentials": lambda a, a_password, b: (None, None),
    "wrong-password": lambda a, a_password, b: (a, "wrong-" + a_password),
    "another-receivers-login": lambda a, a_password, b: (a, a_password),
    "victims-username-wrong-password": lambda a, a_password, b: (b, "wrong-password"),
}


@pytest.mark.parametrize("with_will", [False, True], ids=["no-will", "will"])
@pytest.mark.parametrize("clean_session", [True, False], ids=["clean", "persistent"])
@pytest.mark.parametrize("login", sorted(LOGINS))
def test_a_refused_login_under_a_receivers_client_id_leaves_it_alone(
        backend: ServiceBackend, clients: Clients, monitor: MqttClient, login: str, clean_session: bool,
        with_will: bool) -> None:
    a, a_password = backend.receiver("rx-a")
    b = online_receiver(backend, clients, "rx-b")
    username, password = LOGINS[login](a, a_password, b.rid)
    mark = tag("attacker-will")
    will = Will(topic(b.rid, "state"), state("offline", b.session, "lost", mark=mark)) if with_will else None

    attacker = clients.connect(b.rid, username, password, clean_session=clean_session, will=will,
                               bind_address=ATTACKER_ADDRESS)
    problems = []
    if attacker.accepted:
        problems.append(f"the broker accepted the attacker's login ({login})")
    attacker.kill()  # were it connected, its Will would fire now
    time.sleep(0.2)

    command_id, got = deliver_command(backend, b)
    if b.client.disconnected.is_set():
        problems.append("B was disconnected")
    if got is None:
        problems.append("B no longer receives commands sent through the API")
    if not marker(b, monitor):
        problems.append("B's own messages no longer go through")
    if monitor.received(carrying(mark)) or b.client.received(carrying(mark)):
        problems.append("the attacker's Will was published")
    if monitor.received(carrying(b.will_mark)):
        problems.append("B's Will fired")
    live = backend.live(b.rid)
    if live is None or live["state"] != "online":
        problems.append(f"the API shows B {live and live['state']}")
    kept = [m.payload for m in retained(backend, clients, topic(b.rid, "state"), expect=topic(b.rid, "state"))]
    if kept != [b.birth]:
        problems.append(f"B's retained state is no longer its birth: {kept}")

    # B's session still carries B's own Will, not the attacker's: it is what a lost link publishes.
    b.client.kill()
    fired = monitor.wait_for(lambda m: carrying(b.will_mark)(m) or carrying(mark)(m))
    if fired is None or mark.encode() in fired.payload:
        problems.append(f"when B's link died its Will was {fired.payload if fired else 'not published'}")
    assert not problems, f"{login}, {'clean' if clean_session else 'persistent'} session, " \
                         f"{'with' if with_will else 'without'} Will: " + "; ".join(problems)
