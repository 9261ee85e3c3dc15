"""Check 2, against the service: CONNECTs under the service's own client id (the one the
running service reports, and the fixed "loa-service" it used to have) that the broker refuses
leave the service's connection alone, and it goes on ingesting.

Its own backend instance: when this fails, the service stops ingesting, and every later check
on the same instance would fail for that reason instead of its own."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.broker.security.conftest import own_backend
from tests.broker.security.scenario import carrying, online_receiver, state, tag, topic
from tests.support.broker_backends import BACKENDS, LEGACY_SERVICE_CLIENT_ID, SERVICE_USERNAME, ServiceBackend
from tests.support.mqtt_clients import Clients, MqttClient, Will

ATTACKER_ADDRESS = "127.0.0.3"


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceBackend]:
    yield from own_backend(request, tmp_path_factory, "service-client-id")


def test_a_refused_login_under_the_services_client_id_leaves_the_service_alone(
        backend: ServiceBackend, clients: Clients, monitor: MqttClient) -> None:
    a, a_password = backend.receiver("rx-a")
    victim = online_receiver(backend, clients, "rx-v")
    found = backend.client_id_of_service()
    targets = [LEGACY_SERVICE_CLIENT_ID] + ([found] if found and found != LEGACY_SERVICE_CLIENT_ID else [])
    before = backend.ingest_status()
    mark = tag("attacker-will")
    will = Will(topic(victim.rid, "state"), state("offline", victim.session, "lost", mark=mark))
    accepted = []
    # The service's username with a wrong password only once per id: the embedded broker limits
    # failures per username, and the service's own login must not be the one locked out.
    attempts = [(None, None, None, True), (None, None, will, True), (None, None, will, False),
                (a, a_password, None, True), (a, a_password, will, False), (a, "wrong-password", will, True),
                (a, "wrong-password", None, False), (SERVICE_USERNAME, "wrong-password", will, False)]
    for client_id in targets:
        for username, password, with_will, clean_session in attempts:
            attacker = clients.connect(client_id, username, password, clean_session=clean_session, will=with_will,
                                       bind_address=ATTACKER_ADDRESS)
            if attacker.accepted:
                accepted.append((client_id, username))
            attacker.kill()
    time.sleep(0.5)

    after = backend.ingest_status()
    problems = []
    if accepted:
        problems.append(f"logins accepted under the service's client id: {accepted}")
    if not after["mqtt_connected"]:
        problems.append("the service lost its broker connection")
    if after["mqtt_connections"] != before["mqtt_connections"]:
        problems.append(f"the service's connection was dropped and made again ({before['mqtt_connections']} -> "
                        f"{after['mqtt_connections']} connections)")
    if monitor.received(carrying(mark)):
        problems.append("an attacker's Will was published")
    # The service still ingests: a new receiver's birth shows in the API, the victim is online.
    try:
        online_receiver(backend, clients, "rx-c")
    except AssertionError as exc:
        problems.append(str(exc).splitlines()[0])
    live = backend.live(victim.rid)
    if live is None or live["state"] != "online":
        problems.append(f"the API shows the victim {live and live['state']}")
    assert not problems, f"after refused logins under client ids {targets}: " + "; ".join(problems)
