"""Mosquitto 2 with Loa's production configuration and the dynamic security plugin, for real.

One broker serves the module (each test uses its own receiver ids); the tests that restart
the broker get their own.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker.mosquitto_dynsec import (
    RECEIVER_ROLE,
    BrokerAccountError,
    BrokerUnavailable,
    MosquittoDynsec,
    receiver_role_name,
)
from fleet_service.broker_port import BrokerAccounts
from tests.support.mosquitto_production import ProductionBroker, production_mosquitto
from tests.support.ports import free_port

WAIT = 3.0  # seconds: generous for one local round trip, short enough to keep the file fast


class Probe:
    """A paho client that records what happens to it, for assertions."""

    def __init__(self, broker: ProductionBroker, username: str | None, password: str | None = None,
                 *, client_id: str | None = None, will: tuple[str, bytes] | None = None) -> None:
        self.connack: mqtt.ReasonCode | None = None
        self._connack = threading.Event()
        self.disconnected = threading.Event()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._subacks: dict[int, list] = {}
        self._suback = threading.Condition()
        cid = client_id if client_id is not None else (username or f"anon-{uuid.uuid4().hex[:8]}")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                  protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connack.wait(WAIT):
            raise AssertionError("no CONNACK")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = reason_code
        self._connack.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._suback:
            self._subacks[mid] = list(reason_codes)
            self._suback.notify_all()

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str, qos: int = 1) -> bool:
        """True if the broker granted the subscription (SUBACK other than 0x80)."""
        _, mid = self.client.subscribe(topic, qos)
        with self._suback:
            assert self._suback.wait_for(lambda: mid in self._subacks, WAIT), "no SUBACK"
            return not any(rc.is_failure for rc in self._subacks[mid])

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(WAIT)

    def received(self, until: tuple[str, bytes], timeout: float = WAIT) -> list[tuple[str, bytes]]:
        """Everything received up to and including the marker ``until``."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"{until} not received; got {got}") from None
            got.append(item)
            if item == until:
                return got

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a receiver losing power would."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionBroker]:
    with production_mosquitto(tmp_path_factory.mktemp("prod")) as b:
        yield b


@pytest.fixture
def probes() -> Iterator[list[Probe]]:
    made: list[Probe] = []
    yield made
    for p in made:
        try:
            p.close()
        except Exception:
            pass


@pytest.fixture
def connect(broker: ProductionBroker, probes: list[Probe]):
    def _connect(username: str | None, password: str | None = None, **kw) -> Probe:
        probe = Probe(broker, username, password, **kw)
        probes.append(probe)
        return probe
    return _connect


@pytest.fixture
def receiver(broker: ProductionBroker):
    """Register a receiver with a fresh id and password; returns (id, password)."""
    def _receiver() -> tuple[str, str]:
        rid = f"rx-{uuid.uuid4().hex[:10]}"
        password = uuid.uuid4().hex
        broker.accounts.add_receiver(rid, password)
        return rid, password
    return _receiver


@pytest.fixture
def service(broker: ProductionBroker, connect) -> Probe:
    probe = connect(broker.service_username, broker.service_password, client_id=f"svc-{uuid.uuid4().hex[:8]}")
    assert probe.accepted, probe.connack
    assert probe.subscribe("loa/v1/rx/#")
    return probe


def mine(messages: list[tuple[str, bytes]], *rids: str) -> list[tuple[str, bytes]]:
    return [m for m in messages if any(m[0].startswith(f"loa/v1/rx/{r}/") for r in rids)]


# ---------------------------------------------------------------------------------------------
# Logins
# ---------------------------------------------------------------------------------------------

def test_is_a_broker_accounts(broker: ProductionBroker) -> None:
    accounts: BrokerAccounts = broker.accounts  # the port the registry calls
    assert callable(accounts.add_receiver) and callable(accounts.remove_receiver)


def test_unknown_username_and_anonymous_are_refused(connect) -> None:
    assert not connect("nobody", "whatever").accepted
    assert not connect(None, client_id="anonymous-probe").accepted


def test_wrong_password_is_refused(connect, receiver) -> None:
    rid, password = receiver()
    assert not connect(rid, password + "x").accepted
    assert connect(rid, password).accepted


def test_client_id_must_equal_username(connect, receiver) -> None:
    rid, password = receiver()
    assert not connect(rid, password, client_id=rid + "-other").accepted
    assert connect(rid, password, client_id=rid).accepted


def test_adding_again_replaces_the_password(broker: ProductionBroker, connect, receiver) -> None:
    rid, old = receiver()
    session = connect(rid, old)
    assert session.accepted
    broker.accounts.add_receiver(rid, "new-password")
    assert session.disconnected.wait(WAIT), "a session on the old password was left running"
    assert not connect(rid, old).accepted
    assert connect(rid, "new-password").accepted


def test_revoked_receiver_is_refused(broker: ProductionBroker, connect, receiver) -> None:
    rid, password = receiver()
    broker.accounts.remove_receiver(rid)
    assert not connect(rid, password).accepted
    assert rid not in broker.accounts.list_receivers()
    broker.accounts.remove_receiver(rid)  # again: nothing to do, no error


def test_revoking_disconnects_a_live_session_at_once(broker: ProductionBroker, connect, receiver) -> None:
    rid, password = receiver()
    session = connect(rid, password)
    assert session.accepted
    started = time.monotonic()
    broker.accounts.remove_receiver(rid)
    assert session.disconnected.wait(2.0), "deleteClient did not drop the live session"
    assert time.monotonic() - started < 2.0
    assert not connect(rid, password).accepted
    # The per-receiver role went with the login.
    assert receiver_role_name(rid) not in broker.accounts.list_roles()


def test_disable_drops_the_session_and_enable_lets_it_back(broker: ProductionBroker, connect, receiver) -> None:
    rid, password = receiver()
    session = connect(rid, password)
    broker.accounts.disable_receiver(rid)
    assert session.disconnected.wait(2.0)
    assert not connect(rid, password).accepted
    broker.accounts.enable_receiver(rid)
    assert connect(rid, password).accepted


# ---------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------

def test_receiver_publishes_its_own_topics_and_receives_its_own_commands(connect, receiver, service: Probe) -> None:
    rid, password = receiver()
    rx = connect(rid, password)
    assert rx.subscribe(f"loa/v1/rx/{rid}/#")
    sent = [(f"loa/v1/rx/{rid}/{kind}", kind.encode()) for kind in ("state", "telemetry", "event", "ack")]
    for topic, payload in sent:
        rx.publish(topic, payload)
    assert mine(service.received(until=sent[-1]), rid) == sent

    command = (f"loa/v1/rx/{rid}/cmd", b'{"id":1,"op":"play"}')
    service.publish(*command)
    assert command in rx.received(until=command)


def test_receiver_cannot_publish_on_another_receivers_topics(connect, receiver, service: Probe) -> None:
    (a, pa), (b, pb) = receiver(), receiver()
    rx_a, rx_b = connect(a, pa), connect(b, pb)
    assert rx_b.subscribe(f"loa/v1/rx/{b}/#")
    for topic in (f"loa/v1/rx/{b}/state", f"loa/v1/rx/{b}/cmd", f"loa/v1/rx/{b}/telemetry",
                  f"loa/v1/rx/{a}/cmd",          # not even a command to itself
                  f"loa/v1/rx/{a}/other",        # nor a kind outside the protocol
                  "loa/v1/elsewhere", "some/topic"):
        rx_a.publish(topic, b"forged")
    marker = (f"loa/v1/rx/{a}/event", b"marker")
    rx_a.publish(*marker)
    assert mine(service.received(until=marker), a, b) == [marker]
    # B got nothing either (a command from the service is B's own marker).
    b_marker = (f"loa/v1/rx/{b}/cmd", b"marker")
    service.publish(*b_marker)
    assert rx_b.received(until=b_marker) == [b_marker]


def test_receiver_cannot_subscribe_to_another_receivers_topics(connect, receiver, service: Probe) -> None:
    (a, pa), (b, pb) = receiver(), receiver()
    rx_a, rx_b = connect(a, pa), connect(b, pb)
    for topic in (f"loa/v1/rx/{b}/#", f"loa/v1/rx/{b}/cmd", "loa/v1/rx/+/cmd", "loa/v1/rx/#", "#"):
        assert not rx_a.subscribe(topic), f"{a} was allowed to subscribe to {topic}"
    assert rx_a.subscribe(f"loa/v1/rx/{a}/cmd")
    rx_b.publish(f"loa/v1/rx/{b}/state", b"b-state", retain=True)
    service.publish(f"loa/v1/rx/{b}/cmd", b"for-b")
    marker = (f"loa/v1/rx/{a}/cmd", b"marker")
    service.publish(*marker)
    assert rx_a.received(until=marker) == [marker]


def test_service_receives_everything_and_publishes_only_commands(connect, receiver, service: Probe) -> None:
    (a, pa), (b, pb) = receiver(), receiver()
    rx_a, rx_b = connect(a, pa), connect(b, pb)
    assert rx_a.subscribe(f"loa/v1/rx/{a}/#")
    rx_a.publish(f"loa/v1/rx/{a}/telemetry", b"ta", qos=0)
    rx_b.publish(f"loa/v1/rx/{b}/event", b"eb")
    got = service.received(until=(f"loa/v1/rx/{b}/event", b"eb"))
    assert (f"loa/v1/rx/{a}/telemetry", b"ta") in got
    # The service cannot forge a receiver's state, nor publish outside the tree.
    forged = (f"loa/v1/rx/{a}/state", b"forged-by-service")
    service.publish(*forged)
    service.publish("elsewhere", b"x")
    marker = (f"loa/v1/rx/{a}/cmd", b"marker")
    service.publish(*marker)
    assert forged not in rx_a.received(until=marker)
    assert rx_b.messages.empty()


def test_last_will_on_its_own_state_reaches_the_service(connect, receiver, service: Probe) -> None:
    rid, password = receiver()
    will = (f"loa/v1/rx/{rid}/state", b'{"online":false,"bdseq":7}')
    rx = connect(rid, password, will=will)
    assert rx.accepted
    rx.kill()
    assert will in service.received(until=will)


def test_last_will_on_another_receivers_topic_goes_nowhere(broker: ProductionBroker, connect, receiver,
                                                           service: Probe) -> None:
    (a, pa), (b, _) = receiver(), receiver()
    forged = (f"loa/v1/rx/{b}/state", b'{"online":false}')
    rx = connect(a, pa, will=forged)
    if rx.accepted:
        rx.kill()
        time.sleep(0.3)
    rx_a2 = connect(a, pa, client_id=a)
    marker = (f"loa/v1/rx/{a}/event", b"after-will")
    rx_a2.publish(*marker)
    assert forged not in service.received(until=marker)


def test_a_slow_service_loses_nothing_of_a_burst_beyond_the_default_queue(connect, receiver, service: Probe) -> None:
    # With Mosquitto's default max_queued_messages (1000) most of this burst would be dropped
    # for a subscriber that does not keep up; the production config queues it.
    rid, password = receiver()
    rx = connect(rid, password)
    service.client.loop_stop()  # the service stops reading: nothing is acknowledged
    burst = 2500
    infos = [rx.client.publish(f"loa/v1/rx/{rid}/event", str(i).encode(), qos=1) for i in range(burst)]
    for info in infos:
        info.wait_for_publish(10)
    service.client.loop_start()
    got = mine(service.received(until=(f"loa/v1/rx/{rid}/event", str(burst - 1).encode()), timeout=10), rid)
    assert [int(p) for _, p in got] == list(range(burst))


def test_receivers_stay_confined_even_if_the_default_access_is_loosened(tmp_path: Path) -> None:
    # The shared loa-receiver role denies what a receiver's own role does not allow, whatever
    # the plugin's default ACL access says.
    with production_mosquitto(tmp_path) as broker:
        accounts = broker.accounts
        accounts.check(accounts.execute({"command": "setDefaultACLAccess", "acls": [
            {"acltype": t, "allow": True}
            for t in ("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe")]})[0])
        accounts.add_receiver("rx-a", "pa")
        accounts.add_receiver("rx-b", "pb")
        a = Probe(broker, "rx-a", "pa")
        service = Probe(broker, broker.service_username, broker.service_password, client_id="svc")
        try:
            assert service.subscribe("loa/v1/rx/#")
            assert not a.subscribe("loa/v1/rx/rx-b/#")
            assert not a.subscribe("#")
            assert a.subscribe("loa/v1/rx/rx-a/#")
            a.publish("loa/v1/rx/rx-b/state", b"forged")
            marker = ("loa/v1/rx/rx-a/state", b"marker")
            a.publish(*marker)
            assert mine(service.received(until=marker), "rx-b") == []
        finally:
            a.close()
            service.close()


# ---------------------------------------------------------------------------------------------
# The plugin's own behaviour on this Mosquitto (why the roles look the way they do)
# ---------------------------------------------------------------------------------------------

def test_dynsec_on_this_mosquitto_does_not_substitute_client_id_in_acls(broker: ProductionBroker, connect) -> None:
    """Mosquitto 2.0.11's dynsec matches ``%c``/``%u`` in ACL topics literally. That is why each
    receiver has its own role with its topics spelled out. If this starts failing after an
    upgrade, one shared role with ``loa/v1/rx/%c/...`` would do."""
    accounts = broker.accounts
    name = f"probe-{uuid.uuid4().hex[:8]}"
    role = f"probe-role-{name}"
    for response in accounts.execute(
        {"command": "createRole", "rolename": role, "acls": [
            {"acltype": "subscribePattern", "topic": "probe/%c/#", "allow": True},
            {"acltype": "subscribePattern", "topic": "probe/%u/x/#", "allow": True}]},
        {"command": "createClient", "username": name, "password": "p", "clientid": name,
         "roles": [{"rolename": role}]},
    ):
        accounts.check(response)
    try:
        probe = connect(name, "p")
        assert probe.accepted
        assert not probe.subscribe(f"probe/{name}/#")
        assert not probe.subscribe(f"probe/{name}/x/y")
        assert probe.subscribe("probe/%c/#")  # the literal text is what matches
    finally:
        for response in accounts.execute({"command": "deleteClient", "username": name},
                                         {"command": "deleteRole", "rolename": role}):
            accounts.check(response)


def test_broker_errors_carry_the_plugins_text(broker: ProductionBroker) -> None:
    with pytest.raises(BrokerAccountError) as caught:
        broker.accounts.enable_receiver("rx-never-registered")
    assert caught.value.broker_error == "Client not found"
    response = broker.accounts.execute({"command": "getRole", "rolename": "no-such-role"})[0]
    with pytest.raises(BrokerAccountError, match="Role not found"):
        broker.accounts.check(response)


def test_receiver_ids_never_touch_the_admin_or_service_logins(broker: ProductionBroker, connect) -> None:
    for name in (broker.admin_username, broker.service_username):
        with pytest.raises(BrokerAccountError, match="not a receiver login"):
            broker.accounts.add_receiver(name, "hijack")
        with pytest.raises(BrokerAccountError, match="not a receiver login"):
            broker.accounts.remove_receiver(name)
    assert receiver_role_name(broker.service_username) not in broker.accounts.list_roles()
    assert connect(broker.service_username, broker.service_password, client_id="svc-check").accepted
    assert broker.accounts.connected


def test_invalid_receiver_ids_are_rejected_before_reaching_the_broker(broker: ProductionBroker) -> None:
    for bad in ("a/b", "+", "#", "", "x" * 65):
        with pytest.raises(ValueError):
            broker.accounts.add_receiver(bad, "pw")


def test_concurrent_calls_from_many_threads(broker: ProductionBroker) -> None:
    rids = [f"rx-par-{uuid.uuid4().hex[:8]}" for _ in range(24)]
    errors: list[BaseException] = []

    def work(rid: str) -> None:
        try:
            broker.accounts.add_receiver(rid, "pw-" + rid)
            broker.accounts.add_receiver(rid, "pw2-" + rid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in rids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors
    assert set(rids) <= broker.accounts.list_receivers()
    for rid in rids:
        broker.accounts.remove_receiver(rid)


# ---------------------------------------------------------------------------------------------
# Reconciliation, restarts, a broker that is not there
# ---------------------------------------------------------------------------------------------

def test_sync_reconciles_the_broker_with_the_registry(tmp_path: Path) -> None:
    with production_mosquitto(tmp_path) as broker:
        accounts = broker.accounts
        accounts.list_page_size = 2  # exercise paging with a handful of logins
        for rid in ("r1", "r2", "r3"):
            accounts.add_receiver(rid, f"pw-{rid}")
        # A leftover role nobody holds, and a receiver that lost its own role.
        accounts.check(accounts.execute({"command": "createRole", "rolename": receiver_role_name("gone")})[0])
        accounts.check(accounts.execute({"command": "removeClientRole", "username": "r1",
                                         "rolename": receiver_role_name("r1")})[0])

        missing = accounts.sync({"r1", "r4"})
        assert missing == ["r4"]
        assert accounts.list_receivers() == {"r1"}
        roles = set(accounts.list_roles())
        assert receiver_role_name("r1") in roles
        assert not roles & {receiver_role_name(r) for r in ("r2", "r3", "gone")}
        assert {RECEIVER_ROLE, "loa-service", "admin"} <= roles
        assert accounts.get_client(broker.service_username) is not None
        assert accounts.get_client(broker.admin_username) is not None

        # With passwords, missing receivers are created.
        assert accounts.sync({"r1": "ignored", "r5": "pw-r5"}) == []
        assert accounts.list_receivers() == {"r1", "r5"}
        for rid, password in (("r1", "pw-r1"), ("r5", "pw-r5")):
            probe = Probe(broker, rid, password)
            try:
                assert probe.accepted
                assert probe.subscribe(f"loa/v1/rx/{rid}/cmd")
            finally:
                probe.close()


def test_logins_survive_a_broker_restart_and_the_admin_connection_comes_back(tmp_path: Path) -> None:
    with production_mosquitto(tmp_path) as broker:
        broker.accounts.add_receiver("rx-before", "pw-before")
        broker.restart()
        assert broker.accounts.list_receivers() == {"rx-before"}
        broker.accounts.add_receiver("rx-after", "pw-after")  # same MosquittoDynsec, reconnected
        for rid, password in (("rx-before", "pw-before"), ("rx-after", "pw-after")):
            probe = Probe(broker, rid, password)
            try:
                assert probe.accepted
            finally:
                probe.close()
        service = Probe(broker, broker.service_username, broker.service_password, client_id="svc")
        try:
            assert service.accepted and service.subscribe("loa/v1/rx/#")
        finally:
            service.close()
        assert '"username":\t"rx-before"' in broker.dynsec_file.read_text()


def test_no_broker_means_a_prompt_clear_error() -> None:
    accounts = MosquittoDynsec("127.0.0.1", free_port(), "loa-admin", "pw", timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="no admin connection"):
            accounts.add_receiver("rx-1", "pw")
        assert time.monotonic() - started < 3
    finally:
        accounts.close()


def test_a_wrong_admin_password_is_reported(broker: ProductionBroker) -> None:
    accounts = MosquittoDynsec(broker.host, broker.port, broker.admin_username, "wrong", timeout=0.5)
    try:
        with pytest.raises(BrokerUnavailable, match="Not authorized"):
            accounts.list_receivers()
    finally:
        accounts.close()


def test_the_admin_connection_comes_back_after_being_dropped(broker: ProductionBroker) -> None:
    accounts = MosquittoDynsec(broker.host, broker.port, broker.admin_username, broker.admin_password,
                               client_id="loa-admin-drop-test")
    try:
        accounts.start(wait=WAIT)
        # Another login under the same client id takes the session over: ours is dropped.
        intruder = Probe(broker, broker.admin_username, broker.admin_password, client_id="loa-admin-drop-test")
        intruder.close()
        assert broker.service_username not in accounts.list_receivers()  # answered after reconnecting
        accounts.add_receiver("rx-after-drop", "pw")
        assert "rx-after-drop" in broker.accounts.list_receivers()
        broker.accounts.remove_receiver("rx-after-drop")
    finally:
        accounts.close()


def test_command_line_bootstrap_is_idempotent(broker: ProductionBroker, monkeypatch: pytest.MonkeyPatch,
                                              connect) -> None:
    from broker.mosquitto_dynsec import main

    for name, value in {"LOA_MOSQUITTO_ADMIN_USERNAME": broker.admin_username,
                        "LOA_MOSQUITTO_ADMIN_PASSWORD": broker.admin_password,
                        "LOA_MQTT_HOST": broker.host, "LOA_MQTT_PORT": str(broker.port),
                        "LOA_MQTT_USERNAME": broker.service_username,
                        "LOA_MQTT_PASSWORD": broker.service_password}.items():
        monkeypatch.setenv(name, value)
    assert main(["bootstrap"]) == 0
    assert main(["bootstrap"]) == 0
    assert connect(broker.service_username, broker.service_password, client_id="svc-cli").accepted
