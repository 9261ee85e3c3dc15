"""The broker security suite: hostile checks that run identically against every broker backend
the service supports. Each backend runs as production runs it (``loa serve`` in its own
process, configured by LOA_* variables; Mosquitto with the production configuration), starts
once for the package, and every test uses fresh receiver ids. A backend is added with one entry
in tests/support/broker_backends.py's BACKENDS.

A module whose checks would leave a backend unusable for the others when they fail (an attack
on the service's own session), or that needs other settings, overrides ``backend`` with its
own instance (``own_backend``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.broker.security import scenario
from tests.support.broker_backends import BACKENDS, ServiceBackend
from tests.support.mqtt_clients import Clients, MqttClient


def own_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, purpose: str, *,
                capability: str | None = None, env: dict[str, str] | None = None) -> Iterator[ServiceBackend]:
    """A running instance of the backend ``request.param``, stopped afterwards. With
    ``capability``, a backend that lacks it is skipped with its reason before anything starts."""
    kind = BACKENDS[request.param]
    if capability is not None and capability not in kind.capabilities:
        pytest.skip(kind.lacking.get(capability, f"{kind.name}: no {capability}"))
    started = kind(tmp_path_factory.mktemp(f"{purpose}-{request.param}"), extra_env=env)
    started.start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="package", params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceBackend]:
    yield from own_backend(request, tmp_path_factory, "security")


@pytest.fixture
def clients(backend: ServiceBackend) -> Iterator[Clients]:
    made = Clients(backend.mqtt_host, backend.mqtt_port)
    try:
        yield made
    finally:
        made.close_all()


@pytest.fixture
def monitor(backend: ServiceBackend, clients: Clients) -> MqttClient:
    """Subscribed to loa/v1/rx/# with the service's rights: sees what the service would."""
    return scenario.monitor(backend, clients)
