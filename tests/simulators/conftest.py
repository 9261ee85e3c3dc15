"""Fixtures: private Mosquitto brokers and observers, cleaned up after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.simulators.helpers import Observer, SecureBroker


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], SecureBroker]]:
    brokers: list[SecureBroker] = []

    def make(credentials: dict[str, str]) -> SecureBroker:
        broker = SecureBroker(tmp_path / f"mosquitto-{len(brokers)}", credentials)
        broker.start()
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def make_observer() -> Iterator[Callable[[SecureBroker], Observer]]:
    observers: list[Observer] = []

    def make(broker: SecureBroker) -> Observer:
        observer = Observer(broker.host, broker.port, client_id=f"observer-{len(observers)}")
        observers.append(observer)
        return observer

    yield make
    for observer in observers:
        # Every message a virtual receiver published must decode with the protocol's codec.
        observer.protocol_messages()
        observer.close()
