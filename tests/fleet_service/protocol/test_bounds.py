"""Every number of the protocol is bounded by what a receiver can really send, and floats are
finite: a value beyond that is refused at the edge, never carried into the service (where
``10**400`` once made a float conversion raise after the tracker had acted on it)."""

from __future__ import annotations

import json
import types
import typing

import annotated_types
import pytest
from pydantic import BaseModel

from fleet_service.protocol import (
    CommandError,
    ConfigCommand,
    DecodeError,
    PlayCommand,
    RebootCommand,
    ReceiverSettings,
    ScheduleCommand,
    ScheduleSlot,
    StopCommand,
    VolumeCommand,
    decode,
    decode_command,
)
from fleet_service.protocol.codec import PAYLOAD_MODELS, DropReason
from fleet_service.protocol.messages import BIG_COUNTER_MAX, UINT32_MAX, AckReason
from fleet_service.protocol.topics import MessageKind

MODELS: list[type[BaseModel]] = [*PAYLOAD_MODELS.values(), PlayCommand, StopCommand, VolumeCommand, RebootCommand,
                                 ConfigCommand, ScheduleCommand, ReceiverSettings, ScheduleSlot]


def numeric_fields() -> list[tuple[type[BaseModel], str]]:
    found = []
    for model in MODELS:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            kinds = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) else {annotation}
            if kinds & {int, float}:
                found.append((model, name))
    return found


@pytest.mark.parametrize(("model", "name"), numeric_fields(), ids=lambda v: getattr(v, "__name__", v))
def test_every_number_has_both_bounds_and_every_float_is_finite(model: type[BaseModel], name: str) -> None:
    field = model.model_fields[name]
    ge = [m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)]
    le = [m.le for m in field.metadata if isinstance(m, annotated_types.Le)]
    assert ge and le, f"{model.__name__}.{name} needs a lower and an upper bound"
    assert le[0] <= BIG_COUNTER_MAX, f"{model.__name__}.{name}: beyond what a JSON number carries exactly"
    if float in typing.get_args(field.annotation) or field.annotation is float:
        assert any(getattr(m, "allow_inf_nan", True) is False for m in field.metadata), \
            f"{model.__name__}.{name} must refuse NaN and Infinity"


REPORT = {"v": 1, "session": 3, "seq": 7, "ts": 1767225600, "up": 3600, "amp": "on", "st": "playing", "fw": "0.1.0"}
VALID = {
    MessageKind.STATE: {"v": 1, "state": "online", "session": 1, "reason": "reconnect", "off": 12.5},
    MessageKind.TELEMETRY: {**REPORT, "rssi": -71, "csq": 21, "temp": 41.5, "vin": 12.1, "kbps": 64, "urun": 2,
                            "mem": 81234, "sb": 10**10, "vol": 80, "sched": 3, "skew": -250, "sync": 60},
    MessageKind.EVENT: {"v": 1, "session": 3, "ts": 1767225600, "kind": "boot"},
    MessageKind.ACK: {"v": 1, "session": 3, "id": "c1", "st": "done", "ts": 1767225600},
    MessageKind.PLAY: {"v": 1, "session": 3, "ts": 1767225600, "st": "playing", "vol": 80, "why": "command",
                       "sched": 2},
}
# Wire names of the numbers in each message, with their largest value.
UPPER = {
    MessageKind.STATE: {"session": UINT32_MAX, "off": 10 * 365 * 86400},
    MessageKind.TELEMETRY: {"session": UINT32_MAX, "seq": UINT32_MAX, "ts": UINT32_MAX, "up": UINT32_MAX, "rssi": 0,
                            "csq": 99, "temp": 125, "vin": 60, "kbps": 10_000, "urun": UINT32_MAX, "mem": UINT32_MAX,
                            "sb": BIG_COUNTER_MAX, "vol": 100, "sched": UINT32_MAX, "skew": 2**31 - 1,
                            "sync": UINT32_MAX},
    MessageKind.EVENT: {"session": UINT32_MAX, "ts": UINT32_MAX},
    MessageKind.ACK: {"session": UINT32_MAX, "ts": UINT32_MAX},
    MessageKind.PLAY: {"session": UINT32_MAX, "ts": UINT32_MAX, "vol": 100, "sched": UINT32_MAX},
}
CASES = [(kind, wire, top) for kind, fields in UPPER.items() for wire, top in fields.items()]


def wire(kind: MessageKind, **fields: object) -> bytes:
    return json.dumps({**VALID[kind], **fields}).encode()


@pytest.mark.parametrize(("kind", "field", "top"), CASES, ids=[f"{k.value}.{f}" for k, f, _ in CASES])
def test_receiver_numbers_are_taken_up_to_their_bound_and_refused_beyond(kind: MessageKind, field: str,
                                                                         top: int) -> None:
    topic = f"loa/v1/rx/rx-1/{kind.value}"
    decode(topic, wire(kind, **{field: top}), max_bytes=4096)
    for beyond in (top + 1, 10**400, -(10**400)):
        with pytest.raises(DecodeError) as info:
            decode(topic, wire(kind, **{field: beyond}), max_bytes=4096)
        assert info.value.reason is DropReason.SCHEMA


@pytest.mark.parametrize("kind", [MessageKind.STATE, MessageKind.TELEMETRY])
@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_floats_must_be_finite(kind: MessageKind, constant: bytes) -> None:
    """pydantic's JSON parser reads NaN and Infinity (as Python's json does); the bounds refuse them."""
    field = b'"off"' if kind is MessageKind.STATE else b'"temp"'
    payload = wire(kind)[:-1] + b", " + field + b": " + constant + b"}"
    with pytest.raises(DecodeError) as info:
        decode(f"loa/v1/rx/rx-1/{kind.value}", payload, max_bytes=4096)
    assert info.value.reason is DropReason.SCHEMA


COMMAND = {"v": 1, "id": "c1", "op": "stop", "ts": 1767225600, "exp": 1767229200}


@pytest.mark.parametrize("field", ["ts", "exp"])
def test_command_times_are_unix_seconds_within_32_bits(field: str) -> None:
    decode_command(json.dumps({**COMMAND, field: UINT32_MAX}).encode())
    for beyond in (UINT32_MAX + 1, 10**400, -1):
        with pytest.raises(CommandError) as info:
            decode_command(json.dumps({**COMMAND, field: beyond}).encode())
        assert (info.value.reason, info.value.command_id) == (AckReason.MALFORMED, "c1")


@pytest.mark.parametrize("payload", [
    b'{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2, "x": NaN}',          # not JSON
    b'{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2, "x": -Infinity}',
    '{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2}'.encode("utf-16"),    # JSON, not in UTF-8
    b'\xef\xbb\xbf{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2}',       # a byte order mark
    b'{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2, "x": "\xed\xa0\x80"}',  # an encoded surrogate
    b'{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2, "x": ' + b"[" * 32 + b"]" * 32 + b"}",  # 33 deep
])
def test_commands_are_strict_json(payload: bytes) -> None:
    """What a receiver's parser refuses, the definition refuses: the verdict is the same on both."""
    with pytest.raises(CommandError) as info:
        decode_command(payload)
    assert (info.value.reason, info.value.command_id) == (AckReason.MALFORMED, None)


def test_brackets_in_strings_do_not_count_as_nesting_and_long_integers_are_out_of_bounds() -> None:
    deep_in_string = json.dumps({**COMMAND, "x": [[["[" * 100]]], "y": "\\\"[[[" * 20}).encode()
    assert decode_command(deep_in_string).command_id == "c1"
    assert decode_command(json.dumps({**COMMAND, "x": [[[]]] * 31}).encode()).command_id == "c1"
    # Longer than CPython converts: read as out of every bound, like the receiver reading it whole.
    huge = b'{"v": 1, "id": "c1", "op": "volume", "ts": 1, "exp": 2, "vol": ' + b"9" * 5000 + b"}"
    with pytest.raises(CommandError) as info:
        decode_command(huge)
    assert (info.value.reason, info.value.command_id) == (AckReason.VOLUME_RANGE, "c1")
    ignored = b'{"v": 1, "id": "c1", "op": "stop", "ts": 1, "exp": 2, "x": -' + b"9" * 5000 + b"}"
    assert decode_command(ignored).command_id == "c1"


@pytest.mark.parametrize("value", [0, 86400, "0", "2025-01-01T00:00:00", "2025-01-01 00:00", " 2025-01-01"])
def test_slot_dates_are_calendar_dates_only(value: object) -> None:
    """pydantic would read Unix seconds and midnight date-times as dates; a receiver does not."""
    slot = {"id": "m", "s": "05:30", "e": "06:00", "u": "http://a/b.mp3", "f": value}
    with pytest.raises(CommandError) as info:
        decode_command(json.dumps({**COMMAND, "op": "schedule", "ver": 1, "slots": [slot]}).encode())
    assert info.value.reason is AckReason.BAD_SCHEDULE
