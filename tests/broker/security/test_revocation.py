"""Check 4: revoking a receiver or rotating its password, through the API or the CLI, drops the
live session that used the old password within seconds, and the old password stops working.

The CLI runs as an operator on the server runs it: its own process with the service's
environment, while the service runs. Time is counted from when the change is made: the API's
answer or the CLI's exit, by when it is committed to the database."""

from __future__ import annotations

import re
import time

import pytest

from tests.broker.security.scenario import online_receiver
from tests.support.broker_backends import ServiceBackend
from tests.support.mqtt_clients import Clients

DROP_WITHIN_S = 5.0
_PASSWORD_LINE = re.compile(r"MQTT password:\s*(\S+)")


def rotate(backend: ServiceBackend, rid: str, path: str) -> str:
    if path == "api":
        return backend.provision(rid)
    out = backend.run_cli("receivers", "provision", rid).stdout
    found = _PASSWORD_LINE.search(out)
    assert found, f"no password in the output of loa receivers provision:\n{out}"
    return found.group(1)


def revoke(backend: ServiceBackend, rid: str, path: str) -> None:
    if path == "api":
        backend.revoke(rid)
    else:
        backend.run_cli("receivers", "revoke", rid)


@pytest.mark.parametrize("path", ["api", "cli"])
@pytest.mark.parametrize("change", ["revoke", "rotate"])
def test_revoking_or_rotating_drops_the_live_session(backend: ServiceBackend, clients: Clients, change: str,
                                                     path: str) -> None:
    rx = online_receiver(backend, clients, f"rx-{change}")
    new_password = None
    if change == "revoke":
        revoke(backend, rx.rid, path)
    else:
        new_password = rotate(backend, rx.rid, path)
    changed_at = time.monotonic()

    dropped = rx.client.wait_disconnected(DROP_WITHIN_S)
    late_by = (rx.client.disconnected_at or time.monotonic()) - changed_at
    old = clients.connect(rx.rid, rx.rid, rx.password)
    new = clients.connect(rx.rid, rx.rid, new_password) if new_password is not None else None
    problems = []
    if not dropped:
        problems.append(f"the live session on the old password was still up {DROP_WITHIN_S:.0f} s later")
    if old.accepted:
        problems.append("the old password is still accepted")
    if new is not None and not new.accepted:
        problems.append(f"the new password is refused ({new.connack})")
    assert not problems, f"{change} through the {path}: " + "; ".join(problems)
    assert late_by < DROP_WITHIN_S, f"the session was dropped {late_by:.1f} s after the change"
