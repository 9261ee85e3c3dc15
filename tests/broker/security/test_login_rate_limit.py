"""Check 6, rate limiting: failed logins are limited per receiver id and per client address, for
a sliding minute. A capability of the embedded broker only (``LOGIN_RATE_LIMIT``); a backend
without it is skipped with its reason. Its own service instance, with small limits."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker.security.conftest import own_backend
from tests.support.broker_backends import BACKENDS, LOGIN_RATE_LIMIT, ServiceBackend
from tests.support.mqtt_clients import RawConnection, unique

PER_ADDRESS = 12
PER_RECEIVER = 4


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def limited(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceBackend]:
    yield from own_backend(request, tmp_path_factory, "rate-limit", capability=LOGIN_RATE_LIMIT, env={
        "LOA_MQTT_LOGIN_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
        "LOA_MQTT_LOGIN_FAILURES_PER_RECEIVER": str(PER_RECEIVER),
    })


def login(backend: ServiceBackend, rid: str, password: str, address: str) -> bool:
    link = RawConnection(backend.mqtt_host, backend.mqtt_port, rid, rid, password, bind_address=address)
    link.kill()
    return link.accepted


def test_wrong_passwords_lock_that_receiver_only(limited: ServiceBackend) -> None:
    c, c_password = limited.receiver("rx-c")
    d, d_password = limited.receiver("rx-d")
    assert login(limited, c, c_password, "127.0.0.4"), "C's correct password must work before the guessing"
    for i in range(PER_RECEIVER):
        assert not login(limited, c, f"guess-{i}", "127.0.0.4")
    assert not login(limited, c, c_password, "127.0.0.4"), \
        f"after {PER_RECEIVER} wrong passwords C's correct password was accepted within the window"
    assert not login(limited, c, c_password, "127.0.0.7"), \
        "the per-receiver limit holds from any address"
    assert login(limited, d, d_password, "127.0.0.4"), \
        "D, from the same address, was refused although the address is under its limit"


def test_failures_from_one_address_lock_that_address_only(limited: ServiceBackend) -> None:
    e, e_password = limited.receiver("rx-e")
    for _ in range(PER_ADDRESS):
        nobody = unique("nobody")
        assert not login(limited, nobody, "guess", "127.0.0.5")
    assert not login(limited, e, e_password, "127.0.0.5"), \
        f"after {PER_ADDRESS} failed logins from 127.0.0.5 a correct login from it was accepted within the window"
    assert login(limited, e, e_password, "127.0.0.6"), "a correct login from another address was refused"
