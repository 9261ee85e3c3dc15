"""The suite's own judge: the per-message rules catch what they must (no broker needed)."""

from __future__ import annotations

import json

import pytest

from fleet_service.protocol import StateMessage
from tests.conformance.wire import Rules

RID = "rx-judge"
BIRTH = b'{"v":1,"state":"online","session":3,"reason":"boot","fw":"1.0.0"}'
REPORT = json.dumps({"v": 1, "session": 3, "seq": 0, "ts": 1700000000, "up": 5, "amp": "on", "st": "playing",
                     "fw": "1.0.0"}).encode()


def test_a_conforming_birth_passes(rules: Rules) -> None:
    message, problems = rules.check(RID, f"loa/v1/rx/{RID}/state", BIRTH, qos=1, retain=True)
    assert problems == []
    assert isinstance(message, StateMessage) and message.session == 3


@pytest.mark.parametrize(("topic", "payload", "qos", "retain", "expected"), [
    (f"loa/v1/rx/{RID}/telemetry", REPORT, 0, True, "retain flag 1"),
    (f"loa/v1/rx/{RID}/telemetry", REPORT, 1, False, "QoS 1"),
    (f"loa/v1/rx/{RID}/state", BIRTH, 1, False, "retain flag 0"),
    (f"loa/v1/rx/{RID}/state", BIRTH, 0, True, "QoS 0"),
    (f"loa/v1/rx/{RID}/cmd", b'{"v":1}', 0, False, "cmd topic"),
    ("loa/v1/rx/someone-else/state", BIRTH, 1, True, "outside loa/v1/rx/rx-judge/"),
    ("debug/x", b"hello", 0, False, "outside"),
    (f"loa/v1/rx/{RID}/log", b"{}", 0, False, "not a message of the protocol"),
    (f"loa/v1/rx/{RID}/state", BIRTH.replace(b'"session":3', b'"session":-1'), 1, True, "schema.json: session"),
    (f"loa/v1/rx/{RID}/state", BIRTH.replace(b'"v":1', b'"v":2'), 1, True, "schema.json: v"),
    (f"loa/v1/rx/{RID}/telemetry", REPORT.replace(b'"amp": "on"', b'"amp": "loud"'), 0, False, "schema.json: amp"),
    (f"loa/v1/rx/{RID}/telemetry", REPORT[:-1] + b', "pad": "' + b"x" * 5000 + b'"}', 0, False,
     "more than the service's"),
    (f"loa/v1/rx/{RID}/event", b"not json", 1, False, "not JSON"),
])
def test_each_rule_is_enforced(rules: Rules, topic: str, payload: bytes, qos: int, retain: bool, expected: str) -> None:
    _, problems = rules.check(RID, topic, payload, qos=qos, retain=retain)
    assert any(expected in p for p in problems), problems
