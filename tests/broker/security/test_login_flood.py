"""Check 6: thousands of refused logins, from one address and from several, neither lock out a
legitimate receiver nor grow the broker's memory, and a refused login is logged with its client
address and client id.

The flood comes from addresses no other check uses (127.0.1.x, 127.0.2.x), so that a broker
that limits failed logins per address blocks only the flood."""

from __future__ import annotations

import asyncio
import threading
import time

from tests.broker.security.scenario import online_receiver
from tests.support.broker_backends import ServiceBackend, rss_kib
from tests.support.mqtt_clients import (
    Attempt,
    Clients,
    FloodResult,
    MqttClient,
    RawConnection,
    flood_logins,
    loopback_addresses,
    unique,
)

FLOOD = 3000
WARM_UP = 600
CONCURRENCY = 32
DEADLINE_S = 60.0
# A refused login must leave nothing behind. The bound leaves room for the allocator's noise;
# a broker keeping ~33 KiB per refused login grows by ~98 MB here.
RSS_GROWTH_BOUND_KIB = 15 * 1024
LEGIT_EVERY_S = 0.5
LEGIT_LOGIN_S = 5.0


def attempts(count: int, victim: str, one: str, several: list[str], prefix: str) -> list[Attempt]:
    """Wrong passwords for a real receiver, unknown ids, no credentials: half from ``one``
    address, half spread over ``several``."""
    made = []
    for i in range(count):
        address = one if i % 2 == 0 else several[(i // 2) % len(several)]
        kind = i % 3
        if kind == 0:
            made.append(Attempt(address, victim, victim, f"wrong-{i}"))
        elif kind == 1:
            made.append(Attempt(address, f"{prefix}-nobody-{i}", f"{prefix}-nobody-{i}", "guess"))
        else:
            made.append(Attempt(address, f"{prefix}-anon-{i}", None, None))
    return made


def flood(backend: ServiceBackend, made: list[Attempt]) -> FloodResult:
    return asyncio.run(flood_logins(backend.mqtt_host, backend.mqtt_port, made, concurrency=CONCURRENCY,
                                    deadline_s=DEADLINE_S))


def test_a_login_flood_locks_nobody_out_and_leaves_nothing_behind(backend: ServiceBackend,
                                                                  clients: Clients) -> None:
    legit, legit_password = backend.receiver("rx-legit")
    victim, _ = backend.receiver("rx-victim")
    several = loopback_addresses("127.0.2.1", 8)
    flood(backend, attempts(WARM_UP, victim, "127.0.1.1", several, "warm"))
    pid = backend.broker_pid()
    rss_before = rss_kib(pid)

    result: list[FloodResult] = []
    worker = threading.Thread(target=lambda: result.append(flood(backend, attempts(FLOOD, victim, "127.0.1.1",
                                                                                   several, "flood"))))
    worker.start()
    during: list[tuple[bool, float]] = []
    while worker.is_alive():
        started = time.monotonic()
        login = MqttClient(backend.mqtt_host, backend.mqtt_port, legit, legit, legit_password,
                           timeout=LEGIT_LOGIN_S)
        during.append((login.accepted, time.monotonic() - started))
        login.close()
        time.sleep(max(0.0, LEGIT_EVERY_S - (time.monotonic() - started)))
    worker.join()
    time.sleep(1.0)
    rss_after = rss_kib(pid)
    outcome = result[0]

    assert outcome.finished, f"only {outcome.answered} of {FLOOD} logins were answered within {DEADLINE_S:.0f} s"
    assert not outcome.accepted, f"the flood got in: {outcome.accepted[:3]}"
    assert outcome.failed == 0, f"{outcome.failed} logins got no answer (refused {outcome.refused}, " \
                                f"closed {outcome.closed}) in {outcome.elapsed_s:.1f} s"
    refused_during = [took for ok, took in during if not ok]
    assert during and not refused_during, \
        f"the legitimate receiver was refused {len(refused_during)} of {len(during)} times during the flood"
    online_receiver(backend, clients, credentials=(legit, legit_password))
    grown = rss_after - rss_before
    assert grown < RSS_GROWTH_BOUND_KIB, \
        f"the broker process grew by {grown / 1024:.1f} MB over {FLOOD} refused logins " \
        f"({grown * 1024 / FLOOD / 1024:.1f} KiB each; {rss_before // 1024} -> {rss_after // 1024} MB)"


def test_a_refused_login_is_logged_with_address_and_client_id(backend: ServiceBackend) -> None:
    address = "127.0.3.1"
    client_id = unique("refused")
    link = RawConnection(backend.mqtt_host, backend.mqtt_port, client_id, client_id, "wrong-password",
                         bind_address=address)
    assert not link.accepted
    link.kill()
    deadline = time.monotonic() + 5.0
    while not (logged := backend.refusal_logged(address, link.port, client_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged, f"{backend.name}: no log line names the refused login from {address}:{link.port} as " \
                   f"{client_id!r}; the log ends with:\n{backend.refusal_log()[-1500:]}"
