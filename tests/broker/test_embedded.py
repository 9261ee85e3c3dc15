"""The embedded amqtt broker: logins and topic rights come from the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiomqtt
import pytest

from broker.embedded import EmbeddedBroker, LoginRules
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.worker.composition import _verifier
from fleet_service.registry import service as registry
from fleet_service.runtime import Runtime
from tests.support.fleet import SmallFleet, provision_fleet
from tests.support.ports import free_port

SERVICE_PASSWORD = "service-secret-for-tests"


@pytest.fixture
async def broker_and_fleet(sqlite_url: str) -> AsyncIterator[tuple[EmbeddedBroker, SmallFleet, Runtime]]:
    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=3)
    broker = EmbeddedBroker("127.0.0.1", free_port(), LoginRules("loa-service", SERVICE_PASSWORD,
                                                                  _verifier(runtime.sessions)))
    await broker.start()
    try:
        yield broker, fleet, runtime
    finally:
        await broker.stop()
        runtime.close()


def client(broker: EmbeddedBroker, username: str | None, password: str | None, identifier: str | None = None,
           **kwargs) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, username=username, password=password,
                          identifier=identifier or username, timeout=5, **kwargs)


async def refused(c: aiomqtt.Client) -> bool:
    try:
        async with c:
            return False
    except aiomqtt.MqttError:
        return True


async def test_unknown_wrong_password_and_foreign_client_id_are_refused(broker_and_fleet):
    broker, fleet, _ = broker_and_fleet
    assert await refused(client(broker, "nobody", "x"))
    assert await refused(client(broker, "rx-0", "wrong"))
    assert await refused(client(broker, "rx-0", fleet.credentials["rx-1"]))
    assert await refused(client(broker, "rx-0", fleet.credentials["rx-0"], identifier="rx-1"))
    assert await refused(client(broker, None, None, identifier="anon"))
    assert await refused(client(broker, "loa-service", "wrong"))
    assert not await refused(client(broker, "rx-0", fleet.credentials["rx-0"]))


async def test_revoked_receiver_is_refused_and_dropped_without_restart(broker_and_fleet):
    broker, fleet, runtime = broker_and_fleet
    accounts = broker.accounts()
    async with client(broker, "rx-2", fleet.credentials["rx-2"]) as live:
        await live.subscribe("loa/v1/rx/rx-2/cmd", qos=1)

        async def until_dropped() -> None:
            async for _ in live.messages:
                pass

        listener = asyncio.create_task(until_dropped())
        with session_scope(runtime.sessions) as session:
            registry.revoke(session, "rx-2")
        await asyncio.to_thread(accounts.remove_receiver, "rx-2")
        # The broker closes the connection: the message stream ends with an error.
        with pytest.raises(aiomqtt.MqttError):
            await asyncio.wait_for(listener, timeout=5)
    assert await refused(client(broker, "rx-2", fleet.credentials["rx-2"]))


async def test_receiver_never_gets_another_receivers_retained_state(broker_and_fleet):
    broker, fleet, _ = broker_and_fleet
    got: list[str] = []
    async with client(broker, "loa-service", SERVICE_PASSWORD) as service:
        await service.subscribe("loa/v1/rx/#", qos=1)  # a broad subscription exists in the broker
        async with client(broker, "rx-1", fleet.credentials["rx-1"]) as b:
            await b.publish("loa/v1/rx/rx-1/state", b'{"b": "state"}', qos=1, retain=True)
        async with client(broker, "rx-0", fleet.credentials["rx-0"]) as a:
            await a.subscribe("loa/v1/rx/rx-0/#", qos=1)

            async def collect() -> None:
                async for message in a.messages:
                    got.append(str(message.topic))

            task = asyncio.create_task(collect())
            await asyncio.sleep(0.5)
            task.cancel()
    assert not any("rx-1" in topic for topic in got), got


async def test_receiver_cannot_publish_as_or_subscribe_to_another(broker_and_fleet):
    broker, fleet, _ = broker_and_fleet
    seen: list[str] = []
    async with client(broker, "loa-service", SERVICE_PASSWORD) as service, \
            client(broker, "rx-0", fleet.credentials["rx-0"]) as a, \
            client(broker, "rx-1", fleet.credentials["rx-1"]) as b:
        await service.subscribe("loa/v1/rx/#", qos=1)
        # A may not subscribe to B's topics, nor to everything.
        await a.subscribe("loa/v1/rx/rx-1/#", qos=1)
        await a.subscribe("loa/v1/rx/#", qos=1)
        await a.subscribe("loa/v1/rx/rx-0/#", qos=1)

        async def collect(c: aiomqtt.Client, who: str) -> None:
            async for message in c.messages:
                seen.append(f"{who}:{message.topic}")

        tasks = [asyncio.create_task(collect(service, "service")), asyncio.create_task(collect(a, "a"))]
        await a.publish("loa/v1/rx/rx-1/state", b'{"forged": true}', qos=1)  # as B: dropped
        await a.publish("loa/v1/rx/rx-0/cmd", b"{}", qos=1)                  # commands are the service's
        await b.publish("loa/v1/rx/rx-1/telemetry", b"{}", qos=1)            # B's own: A must not get it
        await a.publish("loa/v1/rx/rx-0/event", b"{}", qos=1)                # A's own: allowed
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
    assert "service:loa/v1/rx/rx-0/event" in seen
    assert "service:loa/v1/rx/rx-1/telemetry" in seen
    assert "a:loa/v1/rx/rx-0/event" in seen
    assert not any("rx-1" in s for s in seen if s.startswith("a:"))
    assert "service:loa/v1/rx/rx-1/state" not in seen
    assert "service:loa/v1/rx/rx-0/cmd" not in seen


async def test_service_reads_everything_and_publishes_only_commands(broker_and_fleet):
    broker, fleet, _ = broker_and_fleet
    got: list[str] = []
    async with client(broker, "rx-0", fleet.credentials["rx-0"]) as a, \
            client(broker, "loa-service", SERVICE_PASSWORD) as service:
        await a.subscribe("loa/v1/rx/rx-0/#", qos=1)

        async def collect() -> None:
            async for message in a.messages:
                got.append(str(message.topic))

        task = asyncio.create_task(collect())
        await service.publish("loa/v1/rx/rx-0/cmd", b"{}", qos=1)
        await service.publish("loa/v1/rx/rx-0/state", b"{}", qos=1)  # not the service's to write
        await asyncio.sleep(0.5)
        task.cancel()
    assert got == ["loa/v1/rx/rx-0/cmd"]


async def test_tls_listener_takes_receivers_with_the_same_certificates_as_mosquitto(tmp_path, sqlite_url):
    import ssl

    from broker.embedded import TlsListener
    from tests.support.mosquitto_production import make_test_certificates

    certs = make_test_certificates(tmp_path / "certs")
    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=1)
    tls = TlsListener("127.0.0.1", free_port(), str(certs / "server.crt"), str(certs / "server.key"))
    broker = EmbeddedBroker("127.0.0.1", free_port(), LoginRules("loa-service", SERVICE_PASSWORD,
                                                                  _verifier(runtime.sessions)), tls=tls)
    await broker.start()
    try:
        trusted = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        async with aiomqtt.Client("127.0.0.1", tls.port, username="rx-0", password=fleet.credentials["rx-0"],
                                  identifier="rx-0", tls_context=trusted, timeout=5) as rx:
            await rx.publish("loa/v1/rx/rx-0/event", b"{}", qos=1)
        # A client that does not trust the certificate gets nowhere.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", tls.port, username="rx-0", password=fleet.credentials["rx-0"],
                                      identifier="rx-0", tls_context=ssl.create_default_context(), timeout=5):
                pass
    finally:
        await broker.stop()
        runtime.close()


async def test_refused_logins_leave_no_session_and_no_harm(broker_and_fleet):
    broker, fleet, _ = broker_and_fleet
    async with client(broker, "rx-0", fleet.credentials["rx-0"]) as victim:
        for i in range(50):
            for clean in (True, False):
                assert await refused(client(broker, "nobody", "x", identifier=f"attacker-{i}", clean_session=clean))
                assert await refused(client(broker, None, None, identifier="rx-0", clean_session=clean))
        assert broker.session_count == 1  # the victim's, nothing of the refused ones
        await victim.subscribe("loa/v1/rx/rx-0/cmd", qos=1)  # still connected and served


async def test_a_new_password_drops_the_old_session_but_not_one_already_using_the_new_one(broker_and_fleet):
    broker, fleet, runtime = broker_and_fleet
    accounts = broker.accounts()

    async def dropped(c: aiomqtt.Client) -> bool:
        try:
            async with asyncio.timeout(3):
                async for _ in c.messages:
                    pass
        except TimeoutError:
            return False
        except aiomqtt.MqttError:
            return True
        return True

    async with client(broker, "rx-1", fleet.credentials["rx-1"]) as old:
        with session_scope(runtime.sessions) as session:
            new_password = registry.provision(session, "rx-1").mqtt_password
        await asyncio.to_thread(accounts.add_receiver, "rx-1", new_password)
        assert await dropped(old)
    async with client(broker, "rx-1", new_password) as current:
        await asyncio.to_thread(accounts.add_receiver, "rx-1", new_password)  # applied late: no harm
        assert not await dropped(current)


def test_login_limiter_counts_failures_per_address_and_per_username():
    from broker.embedded import LoginLimiter

    limiter = LoginLimiter(failures_per_address=5, failures_per_username=3)
    for _ in range(3):
        assert limiter.blocked("10.0.0.1", "rx-1") is None
        limiter.failed("10.0.0.1", "rx-1")
    assert "username" in (limiter.blocked("10.0.0.2", "rx-1") or "")  # from anywhere
    assert limiter.blocked("10.0.0.1", "rx-2") is None
    limiter.failed("10.0.0.1", "rx-2")
    limiter.failed("10.0.0.1", None)
    assert "address" in (limiter.blocked("10.0.0.1", "rx-3") or "")
    assert limiter.blocked("10.0.0.3", "rx-3") is None


async def test_the_services_own_login_is_never_locked_out_by_the_limits(sqlite_url):
    from broker.embedded import LoginLimiter

    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=1)
    limiter = LoginLimiter(failures_per_address=2, failures_per_username=1)
    broker = EmbeddedBroker("127.0.0.1", free_port(), LoginRules("loa-service", SERVICE_PASSWORD,
                                                                  _verifier(runtime.sessions), limiter))
    await broker.start()
    try:
        for _ in range(3):
            assert await refused(client(broker, "loa-service", "wrong", identifier="svc-guess"))
        # The address is past its limit: a receiver's correct login from it is refused unchecked...
        assert await refused(client(broker, "rx-0", fleet.credentials["rx-0"]))
        # ...but the service still gets in.
        assert not await refused(client(broker, "loa-service", SERVICE_PASSWORD, identifier="loa-service-1"))
    finally:
        await broker.stop()
        runtime.close()


async def test_a_receiver_that_never_acknowledges_costs_one_log_line_not_a_traceback(sqlite_url, caplog):
    """amqtt gives a client 5 s to acknowledge a delivery, then logs the failed task (when it
    next looks, or when it stops) with a traceback, which the operator's console must not show."""
    import logging

    import paho.mqtt.client as mqtt

    runtime = Runtime.from_settings(Settings(database_url=sqlite_url, environment="test"))
    fleet = provision_fleet(runtime.sessions, receivers=1)
    broker = EmbeddedBroker("127.0.0.1", free_port(), LoginRules("loa-service", SERVICE_PASSWORD,
                                                                  _verifier(runtime.sessions)))
    await broker.start()
    subscribed = asyncio.Event()
    loop = asyncio.get_running_loop()
    slow = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rx-0")
    slow.username_pw_set("rx-0", fleet.credentials["rx-0"])
    slow.manual_ack_set(True)  # takes the command and never answers PUBACK
    slow.on_connect = lambda c, *_: c.subscribe("loa/v1/rx/rx-0/cmd", qos=1)
    slow.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    try:
        with caplog.at_level(logging.WARNING, logger="amqtt"):
            slow.connect("127.0.0.1", broker.port)
            slow.loop_start()
            await asyncio.wait_for(subscribed.wait(), 5)
            async with client(broker, "loa-service", SERVICE_PASSWORD) as service:
                await service.publish("loa/v1/rx/rx-0/cmd", b'{"v":1}', qos=1)
                for _ in range(100):
                    if any("Timeout waiting for PUBACK" in r.getMessage() for r in caplog.records):
                        break
                    await asyncio.sleep(0.1)
            await broker.stop()  # the failed delivery task is logged by now at the latest
    finally:
        slow.loop_stop()
        slow.disconnect()
        runtime.close()
    timeouts = [r for r in caplog.records if "not acknowledged in time" in r.getMessage()]
    assert timeouts and all(r.exc_info is None for r in timeouts)
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("amqtt"))
