"""Receiver logins on Mosquitto 2, through its dynamic security plugin.

The plugin keeps clients (logins), roles (sets of ACLs) and groups in one JSON file and is
administered at run time by publishing JSON commands to ``$CONTROL/dynamic-security/v1`` with
an admin login; it answers on ``$CONTROL/dynamic-security/v1/response``. Every change is
written to the file at once and applies at once, so the service can create and revoke receiver
logins without touching the broker's configuration or restarting it.

What this module sets up (docs/mosquitto.md has the why):

- one client per receiver: username = receiver id, ``clientid`` locked to the same id (the
  broker refuses the login under any other client id);
- one role per receiver, ``loa-rx-<id>``, allowing publish to ``loa/v1/rx/<id>/{state,
  telemetry,event,ack}`` and subscribe/receive on ``loa/v1/rx/<id>/#``. The dynsec plugin of
  Mosquitto 2.0.11 does not substitute ``%c``/``%u`` in ACL topics (checked by
  tests/broker/test_mosquitto_dynsec.py), so one shared role cannot say "your own topics";
- the shared role ``loa-receiver`` on every receiver, at a lower priority: it denies
  everything the receiver's own role did not allow, and marks the login as a receiver's;
- role ``loa-service``: subscribe/receive ``loa/v1/rx/#``, publish ``loa/v1/rx/+/cmd``;
- default ACL access: deny publish, subscribe and receive unless a role allows it.

Mosquitto 2.0.11 crashes (SIGSEGV) if a role is deleted while a client still holds it and
that client is touched afterwards. Roles are therefore only deleted right after their client
(in the same command batch), or when the full client list shows that nobody holds them.

``MosquittoDynsec`` implements the service's ``fleet_service.broker_port.BrokerAccounts``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from fleet_service.broker_port import BrokerAccounts
from fleet_service.protocol.topics import RECEIVER_PUBLISHES, TOPIC_ROOT, ReceiverId

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = CONTROL_TOPIC + "/response"

RECEIVER_ROLE = "loa-receiver"
RECEIVER_ROLE_PREFIX = "loa-rx-"
SERVICE_ROLE = "loa-service"
# A receiver's own role is checked before the shared one (higher priority first).
_OWN_ROLE_PRIORITY = 10
_SHARED_ROLE_PRIORITY = 0

# What a receiver publishes under its own topic; the broker refuses anything else from it.
RECEIVER_PUBLISH_KINDS = RECEIVER_PUBLISHES

# How long one command may take end to end. The plugin answers in milliseconds on a healthy
# broker; seconds mean the broker or the link to it is in trouble and the caller should know.
DEFAULT_TIMEOUT_S = 5.0
# Reconnect backoff of the admin connection (seconds): quick after a broker restart, but never
# hammering a broker that is down.
_RECONNECT_MIN_S = 1
_RECONNECT_MAX_S = 30
# Keepalive of the admin connection: a dead link is noticed within ~1.5x this.
_KEEPALIVE_S = 30

# Error texts of the plugin (Mosquitto 2.0.x) that the operations below treat as "already so".
_ERR_CLIENT_EXISTS = "Client already exists"
_ERR_CLIENT_NOT_FOUND = "Client not found"
_ERR_ROLE_EXISTS = "Role already exists"
_ERR_ROLE_NOT_FOUND = "Role not found"


class BrokerAccountError(RuntimeError):
    """A dynamic-security command failed. ``broker_error`` is the plugin's own error text when
    the broker answered; ``command`` is the command name."""

    def __init__(self, message: str, *, command: str | None = None, broker_error: str | None = None) -> None:
        super().__init__(message)
        self.command = command
        self.broker_error = broker_error


class BrokerUnavailable(BrokerAccountError):
    """No answer: the admin connection is down, was refused, or the broker did not reply in time."""


class BrokerConnectionLost(BrokerUnavailable):
    """The admin connection dropped while a command was on its way; it may or may not have been
    carried out. The operations of ``MosquittoDynsec`` are idempotent and retry once."""


# --------------------------------------------------------------------------------------------
# Roles
# --------------------------------------------------------------------------------------------

def _acl(acltype: str, topic: str, allow: bool = True, priority: int = 0) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": allow, "priority": priority}


def receiver_role_name(receiver_id: str) -> str:
    """The receiver's own role: its topics, spelled out (no %c substitution in 2.0.11 dynsec)."""
    return f"{RECEIVER_ROLE_PREFIX}{ReceiverId(receiver_id)}"


def receiver_own_acls(receiver_id: str) -> list[dict[str, Any]]:
    own = f"{TOPIC_ROOT}/{ReceiverId(receiver_id)}"
    acls = [_acl("publishClientSend", f"{own}/{kind}") for kind in RECEIVER_PUBLISH_KINDS]
    acls += [
        _acl("subscribePattern", f"{own}/#"),
        _acl("publishClientReceive", f"{own}/#"),
        _acl("unsubscribePattern", f"{own}/#"),
    ]
    return acls


def receiver_shared_acls() -> list[dict[str, Any]]:
    """The shared loa-receiver role: deny whatever the receiver's own role did not allow, so a
    receiver stays confined even if the default ACL access is ever loosened."""
    return [
        _acl("publishClientSend", "#", allow=False),
        _acl("subscribePattern", "#", allow=False),
        _acl("publishClientReceive", "#", allow=False),
    ]


def service_role_acls() -> list[dict[str, Any]]:
    return [
        _acl("subscribePattern", f"{TOPIC_ROOT}/#"),
        _acl("publishClientReceive", f"{TOPIC_ROOT}/#"),
        _acl("unsubscribePattern", f"{TOPIC_ROOT}/#"),
        _acl("publishClientSend", f"{TOPIC_ROOT}/+/cmd"),
    ]


# Deny by default: a login can do only what one of its roles allows. (The plugin's own default
# lets every client receive any message it managed to subscribe to, and unsubscribe.)
DEFAULT_ACL_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}


# --------------------------------------------------------------------------------------------
# Bootstrap: the file, before the broker first starts
# --------------------------------------------------------------------------------------------

def init_dynsec_file(path: str | os.PathLike[str], admin_username: str, admin_password: str,
                     *, owner: str | None = None, mosquitto_ctrl: str | None = None) -> Path:
    """Create the plugin's JSON file with one admin login (``mosquitto_ctrl dynsec init``).

    The admin login may only use ``$CONTROL/dynamic-security/#`` for writing; it can read every
    topic (that is how ``mosquitto_ctrl`` creates it), so keep its password as secret as the
    broker itself. Refuses to overwrite an existing file: that would throw away every receiver
    login. The file is made readable by its owner only (it holds password hashes); pass
    ``owner="mosquitto"`` when running as root, because the broker reads and rewrites the file
    as the user it drops to (the directory must be writable by that user too)."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} exists; delete it yourself if you really mean to start over")
    if not admin_password:
        raise ValueError("the dynamic-security admin password must not be empty")
    ctrl = mosquitto_ctrl or shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
    target.parent.mkdir(parents=True, exist_ok=True)
    if "\n" in admin_password or "\r" in admin_password:
        raise ValueError("the dynamic-security admin password must be one line")
    # The password goes in on stdin (mosquitto_ctrl asks for it twice), not on the command line
    # where any local user could read it in the process list.
    result = subprocess.run([ctrl, "dynsec", "init", str(target), admin_username],
                            input=f"{admin_password}\n{admin_password}\n",
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or not target.exists():
        raise BrokerAccountError(f"mosquitto_ctrl dynsec init failed: {result.stderr.strip() or result.stdout.strip()}")
    target.chmod(0o600)
    if owner is not None:
        shutil.chown(target, user=owner)
    return target


# --------------------------------------------------------------------------------------------
# The admin connection
# --------------------------------------------------------------------------------------------

@dataclass
class _Pending:
    expected: set[str]
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None


class MosquittoDynsec(BrokerAccounts):
    """Administers Mosquitto's dynamic security plugin over MQTT; a ``BrokerAccounts``.

    Holds one paho-mqtt connection with the admin login, on its own network thread, and
    reconnects by itself if it drops. Methods are synchronous and may be called from any
    thread at the same time: each command carries its own correlation data and waits only for
    its own answer. Use it as a context manager, or call ``start()`` and ``close()``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        admin_username: str,
        admin_password: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        client_id: str | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ready = threading.Event()
        self._closed = False
        self._last_refusal: str | None = None
        self._subscribe_mid: int | None = None
        self._receiver_locks = tuple(threading.Lock() for _ in range(64))
        # listClients/listRoles page size: a province (~2,500 receivers) is a few pages, and
        # no single response grows past a few hundred kB.
        self.list_page_size = 1000

        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{admin_username}-{uuid.uuid4().hex[:12]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.username_pw_set(admin_username, admin_password)
        if tls_context is not None:
            self._client.tls_set_context(tls_context)
        self._client.reconnect_delay_set(_RECONNECT_MIN_S, _RECONNECT_MAX_S)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._started = False
        self._start_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, wait: float | None = None) -> MosquittoDynsec:
        """Connect in the background; with ``wait``, block until ready or raise BrokerUnavailable."""
        with self._start_lock:
            if self._closed:
                raise BrokerUnavailable("the admin connection is closed")
            if not self._started:
                self._started = True
                self._client.connect_async(self.host, self.port, keepalive=_KEEPALIVE_S)
                self._client.loop_start()
        if wait is not None:
            self._wait_ready(time.monotonic() + wait)
        return self

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            if self._started:
                self._client.disconnect()
                self._client.loop_stop()
                self._started = False
        self._fail_all("the admin connection was closed")

    def __enter__(self) -> MosquittoDynsec:
        try:
            return self.start(wait=self.timeout)
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    # -- paho callbacks (network thread) ---------------------------------------------------

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Each command is a small request awaiting a small answer: do not let Nagle's algorithm
        # hold it back behind an unacknowledged PUBACK.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._last_refusal = str(reason_code)
            log.warning("dynsec admin login to %s:%s refused: %s", self.host, self.port, reason_code)
            return
        self._last_refusal = None
        result, mid = client.subscribe(RESPONSE_TOPIC, qos=1)
        self._subscribe_mid = mid

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if mid != self._subscribe_mid:
            return
        if any(rc.is_failure for rc in reason_codes):
            self._last_refusal = f"subscription to {RESPONSE_TOPIC} refused"
            log.error("dynsec admin: %s (is this login in the admin role?)", self._last_refusal)
            return
        log.info("dynsec admin connection to %s:%s ready", self.host, self.port)
        self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if not self._closed and was_ready:
            log.warning("dynsec admin connection to %s:%s lost (%s); reconnecting", self.host, self.port, reason_code)
        # An answer to a command sent before the drop may never come: fail those commands now
        # instead of letting them run into the timeout.
        self._fail_all(f"the admin connection to the broker was lost ({reason_code})")

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic != RESPONSE_TOPIC:
            return
        try:
            responses = json.loads(message.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning("dynsec admin: unreadable response %r", message.payload[:200])
            return
        with self._lock:
            for response in responses:
                corr = response.get("correlationData") if isinstance(response, dict) else None
                if not isinstance(corr, str):
                    continue
                request_id = corr.rsplit(".", 1)[0]
                pending = self._pending.get(request_id)
                if pending is None or corr not in pending.expected:
                    continue  # another admin connection's command, or one that gave up
                pending.responses[corr] = response
                if len(pending.responses) == len(pending.expected):
                    pending.done.set()

    def _fail_all(self, reason: str) -> None:  # called on the network thread or by close()
        with self._lock:
            for pending in self._pending.values():
                if not pending.done.is_set():
                    pending.failure = reason
                    pending.done.set()

    # -- commands -------------------------------------------------------------------------

    def _wait_ready(self, deadline: float) -> None:
        if self._closed:
            raise BrokerUnavailable("the admin connection is closed")
        if not self._started:
            self.start()
        if not self._ready.wait(max(0.0, deadline - time.monotonic())):
            why = f": {self._last_refusal}" if self._last_refusal else ""
            raise BrokerUnavailable(f"no admin connection to the broker at {self.host}:{self.port}{why}")

    def execute(self, *commands: Mapping[str, Any], timeout: float | None = None) -> list[dict[str, Any]]:
        """Send ``commands`` in one message and return the plugin's responses in the same order.

        Each response is a dict with ``command`` and, on failure, ``error``; this method does not
        raise for those (see ``check``). Raises ``BrokerUnavailable`` when there is no answer."""
        if not commands:
            return []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._wait_ready(deadline)
        request_id = uuid.uuid4().hex
        tagged = [dict(command, correlationData=f"{request_id}.{i}") for i, command in enumerate(commands)]
        pending = _Pending(expected={c["correlationData"] for c in tagged})
        with self._lock:
            self._pending[request_id] = pending
        try:
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerConnectionLost(f"could not send to the broker: {mqtt.error_string(info.rc)}")
            if not pending.done.wait(max(0.0, deadline - time.monotonic())):
                names = ", ".join(c["command"] for c in tagged)
                raise BrokerUnavailable(f"no answer from the broker to {names} within the timeout")
            if pending.failure is not None:
                if self._closed:
                    raise BrokerUnavailable(pending.failure)
                raise BrokerConnectionLost(pending.failure)
            return [pending.responses[c["correlationData"]] for c in tagged]
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    @staticmethod
    def check(response: Mapping[str, Any], *ok_errors: str) -> dict[str, Any]:
        """Raise ``BrokerAccountError`` if ``response`` carries an error not in ``ok_errors``."""
        error = response.get("error")
        if error and error not in ok_errors:
            command = response.get("command")
            raise BrokerAccountError(f"{command} failed: {error}", command=command, broker_error=error)
        return dict(response)

    def _one(self, command: Mapping[str, Any], *ok_errors: str) -> dict[str, Any]:
        return self.check(self.execute(command)[0], *ok_errors)

    def _retrying(self, operation: Any, *args: Any) -> Any:
        """Run an idempotent operation; if the connection dropped under it, try once more (after
        the reconnection, within the timeout). A plain timeout is not retried: the caller has
        waited long enough."""
        try:
            return operation(*args)
        except BrokerConnectionLost:
            if self._closed:
                raise
            log.info("dynsec: connection lost during %s; retrying once", getattr(operation, "__name__", operation))
            return operation(*args)

    # -- BrokerAccounts -------------------------------------------------------------------

    def _lock_for(self, receiver_id: str) -> threading.Lock:
        # Operations on one receiver take several round trips; two of them at once (say, an
        # add racing a remove) must not interleave. Different receivers proceed in parallel.
        return self._receiver_locks[hash(receiver_id) % len(self._receiver_locks)]

    def add_receiver(self, receiver_id: str, password: str) -> None:
        """Create the receiver's login (client id locked to its username, its own role and the
        shared loa-receiver role). If the login exists, set the new password (which drops a live
        session that used the old one), put the client id and roles right and re-enable it."""
        rid = str(ReceiverId(receiver_id))
        if not password:
            raise ValueError("a receiver password must not be empty")
        with self._lock_for(rid):
            self._retrying(self._add_receiver, rid, password)

    def _add_receiver(self, rid: str, password: str) -> None:
        role = receiver_role_name(rid)
        role_response, client_response = self.execute(
            {"command": "createRole", "rolename": role, "textname": f"Loa receiver {rid}",
             "acls": receiver_own_acls(rid)},
            {"command": "createClient", "username": rid, "password": password, "clientid": rid,
             "textname": "Loa receiver",
             "roles": [{"rolename": role, "priority": _OWN_ROLE_PRIORITY},
                       {"rolename": RECEIVER_ROLE, "priority": _SHARED_ROLE_PRIORITY}]},
        )
        role_created = not self.check(role_response, _ERR_ROLE_EXISTS).get("error")
        client_error = client_response.get("error")
        if client_error and client_error != _ERR_CLIENT_EXISTS:
            if role_created:  # nobody holds it, so deleting it is safe
                self._one({"command": "deleteRole", "rolename": role}, _ERR_ROLE_NOT_FOUND)
            hint = " (has bootstrap_broker() run on this broker?)" if client_error == _ERR_ROLE_NOT_FOUND else ""
            raise BrokerAccountError(f"createClient failed: {client_error}{hint}", command="createClient",
                                     broker_error=client_error)
        if not client_error:
            if not role_created:
                self._set_role_acls(role, receiver_own_acls(rid))
            return
        client = self._get_client(rid)
        if client is None:
            raise BrokerAccountError(f"login {rid!r} vanished while being updated; try again", command="getClient")
        if not self._is_receiver(client):
            if role_created:  # nobody holds it yet, so deleting it is safe
                self._one({"command": "deleteRole", "rolename": role}, _ERR_ROLE_NOT_FOUND)
            raise self._not_a_receiver(rid)
        if not role_created:
            self._set_role_acls(role, receiver_own_acls(rid))
        commands: list[dict[str, Any]] = [{"command": "setClientPassword", "username": rid, "password": password}]
        if client.get("clientid") != rid:
            commands.append({"command": "setClientId", "username": rid, "clientid": rid})
        roles = self._roles_of(client)
        # (addClientRole for a role the client already holds answers "Internal error" on 2.0.11)
        if role not in roles:
            commands.append({"command": "addClientRole", "username": rid, "rolename": role,
                             "priority": _OWN_ROLE_PRIORITY})
        if client.get("disabled"):
            commands.append({"command": "enableClient", "username": rid})
        for response in self.execute(*commands):
            self.check(response)

    def remove_receiver(self, receiver_id: str) -> None:
        """Delete the receiver's login and its role. The plugin drops a live session of that
        login at once (checked on Mosquitto 2.0.11): no broker restart. Removing a receiver that
        has no login is not an error."""
        rid = str(ReceiverId(receiver_id))
        with self._lock_for(rid):
            self._retrying(self._remove_receiver, rid)

    def _remove_receiver(self, rid: str) -> None:
        client = self._get_client(rid)
        if client is None:
            return
        if not self._is_receiver(client):
            raise self._not_a_receiver(rid)
        # The client first, then its role, in one batch: the order 2.0.11 survives (see top).
        delete_client, delete_role = self.execute(
            {"command": "deleteClient", "username": rid},
            {"command": "deleteRole", "rolename": receiver_role_name(rid)},
        )
        self.check(delete_client, _ERR_CLIENT_NOT_FOUND)
        self.check(delete_role, _ERR_ROLE_NOT_FOUND)

    def disable_receiver(self, receiver_id: str) -> None:
        """Refuse logins and drop a live session at once, but keep the login and its password so
        that ``enable_receiver`` lets the receiver back in (e.g. a receiver reported stolen)."""
        self._toggle(receiver_id, "disableClient")

    def enable_receiver(self, receiver_id: str) -> None:
        self._toggle(receiver_id, "enableClient")

    def _toggle(self, receiver_id: str, command: str) -> None:
        rid = str(ReceiverId(receiver_id))
        with self._lock_for(rid):
            client = self._get_client(rid)
            if client is None:
                raise BrokerAccountError(f"{command} failed: {_ERR_CLIENT_NOT_FOUND}", command=command,
                                         broker_error=_ERR_CLIENT_NOT_FOUND)
            if not self._is_receiver(client):
                raise self._not_a_receiver(rid)
            self._one({"command": command, "username": rid})

    # -- reading --------------------------------------------------------------------------

    def _get_client(self, username: str) -> dict[str, Any] | None:
        response = self._one({"command": "getClient", "username": username}, _ERR_CLIENT_NOT_FOUND)
        if response.get("error"):
            return None
        return response.get("data", {}).get("client")

    def get_client(self, username: str) -> dict[str, Any] | None:
        """The plugin's view of one login (username, clientid, roles, disabled...), or None."""
        return self._retrying(self._get_client, username)

    @staticmethod
    def _roles_of(client: Mapping[str, Any]) -> set[str]:
        return {name for r in client.get("roles", []) if isinstance(r, dict) and isinstance(name := r.get("rolename"), str)}

    @classmethod
    def _is_receiver(cls, client: Mapping[str, Any]) -> bool:
        return RECEIVER_ROLE in cls._roles_of(client)

    @staticmethod
    def _not_a_receiver(username: str) -> BrokerAccountError:
        # A registry entry must never touch a login that is not a receiver's (the admin or the
        # service login), even if someone registers a receiver under that name.
        return BrokerAccountError(
            f"login {username!r} exists on the broker and is not a receiver login; refusing to change it",
            command="getClient",
        )

    def _list(self, command: str, key: str, verbose: bool) -> list[Any]:
        items: list[Any] = []
        offset = 0
        while True:
            data = self._one({"command": command, "verbose": verbose, "count": self.list_page_size,
                              "offset": offset}).get("data", {})
            page = data.get(key, [])
            items.extend(page)
            offset += len(page)
            if not page or offset >= data.get("totalCount", offset):
                return items

    def list_clients(self) -> list[dict[str, Any]]:
        """Every login the plugin knows, with its roles (verbose listClients, paged)."""
        return self._retrying(self._list, "listClients", "clients", True)

    def list_roles(self) -> list[str]:
        return self._retrying(self._list, "listRoles", "roles", False)

    def list_receivers(self) -> set[str]:
        """Usernames of the receiver logins (those holding the loa-receiver role)."""
        return {c["username"] for c in self.list_clients() if self._is_receiver(c)}

    # -- reconciliation -------------------------------------------------------------------

    def sync(self, active: Mapping[str, str] | Iterable[str]) -> list[str]:
        """Make the broker's receiver logins match the registry, e.g. after a restart of either.

        ``active`` is the registry's active receivers: a set of ids, or a mapping id -> password
        when the caller knows the passwords (e.g. right after issuing new ones). Receiver logins
        on the broker that are not in ``active`` are deleted (their sessions are dropped); a
        receiver login that lost its own role gets it back; per-receiver roles nobody holds are
        deleted. A receiver in a mapping but missing on the broker is created with its password.

        Returns the sorted ids still missing on the broker: the registry only keeps password
        hashes, so these receivers need new credentials (re-provisioning) to log in again."""
        wanted: dict[str, str | None]
        if isinstance(active, Mapping):
            wanted = {str(ReceiverId(k)): v for k, v in active.items()}
        else:
            wanted = {str(ReceiverId(k)): None for k in active}

        clients = self.list_clients()
        receivers = {c["username"]: c for c in clients if self._is_receiver(c)}
        for rid in sorted(receivers.keys() - wanted.keys()):
            log.info("sync: removing receiver login %s, not active in the registry", rid)
            self.remove_receiver(rid)
        for rid in sorted(receivers.keys() & wanted.keys()):
            if receiver_role_name(rid) not in self._roles_of(receivers[rid]):
                log.warning("sync: receiver login %s had lost its role; restoring it", rid)
                self._restore_own_role(rid)

        missing: list[str] = []
        for rid in sorted(wanted.keys() - receivers.keys()):
            password = wanted[rid]
            if password:
                log.info("sync: creating receiver login %s", rid)
                self.add_receiver(rid, password)
            else:
                missing.append(rid)

        self._delete_orphan_roles()
        if missing:
            log.warning("sync: %d active receivers have no login on the broker and need new credentials: %s",
                        len(missing), ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        return missing

    def _restore_own_role(self, rid: str) -> None:
        role = receiver_role_name(rid)
        with self._lock_for(rid):
            created = self._one({"command": "createRole", "rolename": role, "textname": f"Loa receiver {rid}",
                                 "acls": receiver_own_acls(rid)}, _ERR_ROLE_EXISTS)
            if created.get("error"):
                self._set_role_acls(role, receiver_own_acls(rid))
            self._one({"command": "addClientRole", "username": rid, "rolename": role,
                       "priority": _OWN_ROLE_PRIORITY})

    def _delete_orphan_roles(self) -> None:
        # Only roles that no client holds, judged from a fresh client list: deleting a role that
        # a client still holds crashes Mosquitto 2.0.11.
        per_receiver = {r for r in self.list_roles() if isinstance(r, str) and r.startswith(RECEIVER_ROLE_PREFIX)}
        if not per_receiver:
            return
        held = set().union(*(self._roles_of(c) for c in self.list_clients()))
        for role in sorted(per_receiver - held):
            log.info("sync: deleting role %s, held by no login", role)
            self._one({"command": "deleteRole", "rolename": role}, _ERR_ROLE_NOT_FOUND)

    # -- bootstrap (once the broker runs) ---------------------------------------------------

    def ensure_roles(self) -> None:
        """Create (or bring up to date) the loa-receiver and loa-service roles, and make access
        deny-by-default. Safe to run at every start."""
        self._ensure_role(RECEIVER_ROLE, "Loa receivers: nothing beyond their own role", receiver_shared_acls())
        self._ensure_role(SERVICE_ROLE, "Loa fleet service", service_role_acls())
        self._one({
            "command": "setDefaultACLAccess",
            "acls": [{"acltype": k, "allow": v} for k, v in DEFAULT_ACL_ACCESS.items()],
        })

    def _ensure_role(self, rolename: str, textname: str, acls: list[dict[str, Any]]) -> None:
        created = self._one({"command": "createRole", "rolename": rolename, "textname": textname, "acls": acls},
                            _ERR_ROLE_EXISTS)
        if created.get("error"):
            self._set_role_acls(rolename, acls)

    def _set_role_acls(self, rolename: str, acls: list[dict[str, Any]]) -> None:
        """Bring an existing role's ACLs to exactly ``acls`` (live sessions keep running; the
        new ACLs apply to their next publish or subscribe)."""
        role = self._one({"command": "getRole", "rolename": rolename}).get("data", {}).get("role", {})

        def key(a: Mapping[str, Any]) -> tuple[Any, ...]:
            return (a.get("acltype"), a.get("topic"), bool(a.get("allow")), int(a.get("priority", 0)))

        current = {key(a): a for a in role.get("acls", [])}
        wanted = {key(a): a for a in acls}
        commands = [{"command": "removeRoleACL", "rolename": rolename, "acltype": a["acltype"], "topic": a["topic"]}
                    for k, a in current.items() if k not in wanted]
        commands += [dict(a, command="addRoleACL", rolename=rolename) for k, a in wanted.items() if k not in current]
        for response in self.execute(*commands) if commands else []:
            self.check(response)

    def ensure_service_login(self, username: str, password: str) -> None:
        """Create the fleet service's own login (role loa-service), or set its password."""
        if not password:
            raise ValueError("the service password must not be empty")
        created = self._one({
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": "Loa fleet service",
            "roles": [{"rolename": SERVICE_ROLE, "priority": 0}],
        }, _ERR_CLIENT_EXISTS)
        if not created.get("error"):
            return
        client = self._get_client(username) or {}
        if self._is_receiver(client):
            raise BrokerAccountError(f"login {username!r} is a receiver login, not the service's", command="getClient")
        commands: list[dict[str, Any]] = [{"command": "setClientPassword", "username": username, "password": password}]
        if SERVICE_ROLE not in self._roles_of(client):
            commands.append({"command": "addClientRole", "username": username, "rolename": SERVICE_ROLE})
        for response in self.execute(*commands):
            self.check(response)


def bootstrap_broker(accounts: MosquittoDynsec, service_username: str, service_password: str) -> None:
    """Everything the running broker needs before the service connects: the shared roles,
    deny-by-default access, and the service's login. Idempotent: run it at every start."""
    accounts.ensure_roles()
    accounts.ensure_service_login(service_username, service_password)


# --------------------------------------------------------------------------------------------
# Command line: python -m broker.mosquitto_dynsec init|bootstrap
# --------------------------------------------------------------------------------------------

def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        raise SystemExit(f"set {name}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``init FILE``: create the dynsec file with the admin login (before the broker's first
    start). ``bootstrap``: create roles and the service login on the running broker. Secrets
    come from the environment (the service's own variables), never from the command line:
    LOA_MOSQUITTO_ADMIN_USERNAME, LOA_MOSQUITTO_ADMIN_PASSWORD, LOA_MQTT_USERNAME,
    LOA_MQTT_PASSWORD, LOA_MQTT_HOST, LOA_MQTT_PORT."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m broker.mosquitto_dynsec", description=main.__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", help="create the dynamic-security JSON file with the admin login")
    init.add_argument("file", type=Path)
    init.add_argument("--owner", help="chown the file to this user (e.g. mosquitto)")
    sub.add_parser("bootstrap", help="create the roles and the service login on the running broker")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    admin_user = _env("LOA_MOSQUITTO_ADMIN_USERNAME", "loa-admin")
    admin_password = _env("LOA_MOSQUITTO_ADMIN_PASSWORD")
    if args.action == "init":
        init_dynsec_file(args.file, admin_user, admin_password, owner=args.owner)
        print(f"created {args.file} with admin login {admin_user!r}")
        return 0
    host = _env("LOA_MQTT_HOST", "127.0.0.1")
    port = int(_env("LOA_MQTT_PORT", "1883"))
    with MosquittoDynsec(host, port, admin_user, admin_password) as accounts:
        bootstrap_broker(accounts, _env("LOA_MQTT_USERNAME", "loa-service"), _env("LOA_MQTT_PASSWORD"))
    print(f"roles {RECEIVER_ROLE}, {SERVICE_ROLE} and the service login are in place on {host}:{port}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
