import json

import pytest

from fleet_service.protocol import DecodeError, MessageKind, StateMessage, Telemetry, decode
from fleet_service.protocol.codec import DropReason
from fleet_service.protocol.messages import AmpState, StreamState, csq_to_dbm

STATE = "loa/v1/rx/rx-001/state"
TELEMETRY = "loa/v1/rx/rx-001/telemetry"


def telemetry_payload(**overrides) -> bytes:
    body = {"v": 1, "session": 3, "seq": 7, "ts": 1767225600, "up": 3600, "rssi": -71, "csq": 21, "temp": 41.5,
            "vin": 12.1, "amp": "on", "st": "playing", "kbps": 64, "urun": 2, "mem": 81234, "rst": "power_on",
            "fw": "0.1.0"}
    body.update(overrides)
    return json.dumps(body).encode()


def test_telemetry_decodes_to_typed_frozen_value():
    decoded = decode(TELEMETRY, telemetry_payload(), max_bytes=4096)
    assert decoded.topic.kind is MessageKind.TELEMETRY and decoded.topic.receiver_id == "rx-001"
    t = decoded.message
    assert isinstance(t, Telemetry)
    assert (t.signal_dbm, t.amplifier, t.stream, t.underruns) == (-71, AmpState.ON, StreamState.PLAYING, 2)
    with pytest.raises(Exception):
        t.seq = 8  # frozen


def test_unknown_fields_are_ignored_for_minor_versions():
    decoded = decode(TELEMETRY, telemetry_payload(new_field_from_v1_3="x"), max_bytes=4096)
    assert isinstance(decoded.message, Telemetry)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("loa/v1/rx/rx-001/unknown", b"{}", DropReason.TOPIC),
        ("loa/v1/rx/bad id/state", b"{}", DropReason.TOPIC),
        ("other/rx-001/state", b"{}", DropReason.TOPIC),
        (STATE, b"x" * 5000, DropReason.OVERSIZED),
        (STATE, b"not json", DropReason.JSON),
        (STATE, b"[1, 2]", DropReason.JSON),
        (STATE, b'{"v": 2, "state": "online", "session": 1, "reason": "boot"}', DropReason.VERSION),
        (STATE, b'{"v": 1, "state": "dancing", "session": 1, "reason": "boot"}', DropReason.SCHEMA),
        (TELEMETRY, telemetry_payload(rssi=20), DropReason.SCHEMA),
        (TELEMETRY, telemetry_payload(session=-1), DropReason.SCHEMA),
    ],
)
def test_bad_messages_are_refused_with_a_reason(topic, payload, reason):
    with pytest.raises(DecodeError) as info:
        decode(topic, payload, max_bytes=4096)
    assert info.value.reason is reason
    assert topic in str(info.value)


def test_state_round_trips_through_wire_names():
    message = StateMessage(state="online", session=9, reason="reconnect", firmware="1.2.0", offline_s=12.5)
    wire = message.model_dump_json(by_alias=True, exclude_none=True)
    assert json.loads(wire) == {"v": 1, "state": "online", "session": 9, "reason": "reconnect", "fw": "1.2.0",
                                "off": 12.5}
    assert decode(STATE, wire.encode(), max_bytes=4096).message == message


@pytest.mark.parametrize(("csq", "dbm"), [(0, -113), (21, -71), (31, -51), (99, None), (45, None)])
def test_csq_to_dbm(csq, dbm):
    assert csq_to_dbm(csq) == dbm
