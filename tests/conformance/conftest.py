"""Fixtures of the conformance suite: the implementation under test (``--receiver-impl NAME``
or ``LOA_RECEIVER_IMPL=NAME``; without either, every test runs once per implementation of
``DEFAULT_IMPLS``), its brokers and the observer."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# Plain asserts in the suite's helpers explain themselves like those in the tests.
pytest.register_assert_rewrite("tests.conformance.bench", "tests.conformance.wire")

from tests.conformance.bench import BACKOFF_CAP, KEEPALIVE, TELEMETRY_INTERVAL, Bench
from tests.conformance.brokers import PermissiveBroker, permissive_mosquitto
from tests.conformance.driver import ReceiverDriver, ReceiverSpec, load_driver
from tests.conformance.sntp import SntpServer
from tests.conformance.wire import Observer, Rules
from tests.support.mosquitto_production import ProductionBroker, production_mosquitto
from tests.support.stream_server import StreamServer

RECEIVER_ID = "rx-conformance-01"
# Run each test against every one of these when no implementation is named.
DEFAULT_IMPLS = ("simulator", "firmware")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("loa conformance").addoption(
        "--receiver-impl", default=None, metavar="NAME",
        help="receiver implementation the conformance suite drives: a name from "
             "tests/conformance/driver.py DRIVERS or package.module:Factory "
             f"(default: $LOA_RECEIVER_IMPL, else each of {', '.join(DEFAULT_IMPLS)})")


def _impls(config: pytest.Config) -> tuple[str, ...]:
    # The option exists only when this file is loaded at start-up (tests/conformance named on
    # the command line); the environment variable works however the suite is collected.
    named = config.getoption("--receiver-impl", default=None) or os.environ.get("LOA_RECEIVER_IMPL")
    return (named,) if named else DEFAULT_IMPLS


def pytest_report_header(config: pytest.Config) -> str:
    impls = _impls(config)
    if len(impls) == 1:
        return f"conformance: receiver implementation {impls[0]!r}"
    return f"conformance: receiver implementations {', '.join(map(repr, impls))} (each test once per implementation)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that uses the receiver (through bench, open_bench or driver) runs once per
    # implementation; the test id names it, e.g. test_lifecycle[firmware].
    if "receiver_impl" in metafunc.fixturenames:
        impls = _impls(metafunc.config)
        metafunc.parametrize("receiver_impl", impls, ids=impls, scope="session")


@pytest.fixture(scope="session")
def rules() -> Rules:
    return Rules.load()


@pytest.fixture
async def driver(receiver_impl: str) -> AsyncIterator[ReceiverDriver]:
    driver = load_driver(receiver_impl)
    try:
        yield driver
    finally:
        await driver.stop()


def _spec(host: str, port: int, password: str, state_dir: Path, ntp_server: str) -> ReceiverSpec:
    state_dir.mkdir(parents=True, exist_ok=True)
    return ReceiverSpec(
        receiver_id=RECEIVER_ID, host=host, port=port, username=RECEIVER_ID, password=password,
        keepalive=KEEPALIVE, telemetry_interval=TELEMETRY_INTERVAL, backoff_cap=BACKOFF_CAP,
        state_dir=state_dir, ntp_server=ntp_server,
    )


@pytest.fixture
def sntp_server() -> Iterator[SntpServer]:
    """The receiver's clock reference: SNTP on loopback, serving the host's clock."""
    with SntpServer() as server:
        yield server


@pytest.fixture
def stream_server() -> Iterator[StreamServer]:
    """A real HTTP MP3 stream (64 kbit/s) for play commands and schedule slots."""
    with StreamServer(bitrate_kbps=64) as server:
        yield server


@pytest.fixture
def production_broker(tmp_path: Path) -> Iterator[ProductionBroker]:
    with production_mosquitto(tmp_path) as broker:
        yield broker


@pytest.fixture
async def bench(receiver_impl: str, driver: ReceiverDriver, production_broker: ProductionBroker, rules: Rules,
                sntp_server: SntpServer, tmp_path: Path) -> AsyncIterator[Bench]:
    """The receiver on Mosquitto in its production configuration, with its own login; the
    observer logs in as the service and subscribes to loa/v1/rx/#."""
    password = secrets.token_urlsafe(16)
    production_broker.accounts.add_receiver(RECEIVER_ID, password)
    observer = Observer(production_broker.host, production_broker.port, production_broker.service_username,
                        production_broker.service_password, RECEIVER_ID, topic_filter="loa/v1/rx/#", rules=rules)
    try:
        yield Bench(receiver_impl, driver, _spec(production_broker.host, production_broker.port, password,
                                                 tmp_path / "receiver-state", sntp_server.address),
                    observer, production_broker)
    finally:
        await driver.stop()
        observer.close()


@pytest.fixture
async def open_bench(receiver_impl: str, driver: ReceiverDriver, rules: Rules, sntp_server: SntpServer,
                     tmp_path: Path) -> AsyncIterator[Bench]:
    """The receiver on a permissive Mosquitto where it could publish anywhere; the observer
    (the tester login, which may also write anywhere) subscribes to #."""
    password = secrets.token_urlsafe(16)
    with permissive_mosquitto(tmp_path / "permissive", {RECEIVER_ID: password}) as broker:
        observer = _open_observer(broker, rules)
        try:
            yield Bench(receiver_impl, driver, _spec(broker.host, broker.port, password,
                                                     tmp_path / "receiver-state", sntp_server.address),
                        observer, broker)
        finally:
            await driver.stop()
            observer.close()


def _open_observer(broker: PermissiveBroker, rules: Rules) -> Observer:
    return Observer(broker.host, broker.port, broker.tester_username, broker.tester_password, RECEIVER_ID,
                    topic_filter="#", rules=rules)

