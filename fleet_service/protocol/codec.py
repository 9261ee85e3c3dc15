"""Decode an MQTT message once, at the edge, into a typed value, or say precisely why not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, TypeAdapter, ValidationError

from fleet_service.protocol.messages import (
    COMMAND_DEPTH_MAX,
    COMMAND_MAX_BYTES,
    PROTOCOL_VERSION,
    Ack,
    AckReason,
    Command,
    CommandOp,
    Event,
    PlayStatus,
    StateMessage,
    Telemetry,
    UpdateStatus,
)
from fleet_service.protocol.topics import MessageKind, Topic

PAYLOAD_MODELS: dict[MessageKind, type[BaseModel]] = {
    MessageKind.STATE: StateMessage,
    MessageKind.TELEMETRY: Telemetry,
    MessageKind.EVENT: Event,
    MessageKind.ACK: Ack,
    MessageKind.PLAY: PlayStatus,
    MessageKind.UPDATE: UpdateStatus,
}
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

ReceiverMessage = StateMessage | Telemetry | Event | Ack | PlayStatus | UpdateStatus


class DropReason(StrEnum):
    TOPIC = "topic"          # not a topic of this protocol
    OVERSIZED = "oversized"  # larger than the configured maximum
    JSON = "json"            # not a JSON object
    VERSION = "version"      # a protocol major version this service does not speak
    SCHEMA = "schema"        # JSON, right version, wrong fields or values


class DecodeError(ValueError):
    def __init__(self, reason: DropReason, detail: str, topic: str) -> None:
        super().__init__(f"{reason.value}: {detail} (topic {topic!r})")
        self.reason = reason
        self.detail = detail
        self.topic = topic


@dataclass(frozen=True, slots=True)
class Decoded:
    topic: Topic
    message: ReceiverMessage


def decode(topic: str, payload: bytes, *, max_bytes: int) -> Decoded:
    try:
        parsed_topic = Topic.parse(topic)
    except ValueError as exc:
        raise DecodeError(DropReason.TOPIC, str(exc), topic) from None
    if len(payload) > max_bytes:
        raise DecodeError(DropReason.OVERSIZED, f"{len(payload)} bytes > {max_bytes}", topic)
    model = PAYLOAD_MODELS[parsed_topic.kind]
    try:
        message = model.model_validate_json(payload)
    except ValidationError as exc:
        raise _classify(exc, payload, topic) from None
    return Decoded(parsed_topic, message)  # type: ignore[arg-type]


def _classify(exc: ValidationError, payload: bytes, topic: str) -> DecodeError:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] in ("json_invalid", "model_type") for e in errors):
        return DecodeError(DropReason.JSON, "payload is not a JSON object", topic)
    if any(e["loc"] == ("v",) for e in errors):
        try:
            version = repr(json.loads(payload).get("v"))[:40]
        except (ValueError, AttributeError, RecursionError):  # ValueError: also an int too long to print
            version = "?"
        return DecodeError(
            DropReason.VERSION, f"protocol version {version}, this service speaks {PROTOCOL_VERSION}", topic
        )
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return DecodeError(DropReason.SCHEMA, f"{where}: {first['msg']}", topic)


class CommandError(ValueError):
    """A command a receiver cannot carry out as sent. ``command_id`` is the id when one could be
    read (then the receiver acknowledges ``rejected`` with ``reason``), else None (then it can
    only report a ``bad_command`` event)."""

    def __init__(self, reason: AckReason, detail: str, command_id: str | None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.command_id = command_id


_OPS = frozenset(op.value for op in CommandOp)
# By wire name and by long name (pydantic names the field as it was given).
_REASON_BY_FIELD = {"vol": AckReason.VOLUME_RANGE, "volume": AckReason.VOLUME_RANGE, "url": AckReason.BAD_URL,
                    "set": AckReason.UNKNOWN_SETTING, "settings": AckReason.UNKNOWN_SETTING}
_SCHEDULE_FIELDS = ("slots", "ver", "schedule_version", "tz", "tz_offset_min", "")


# Digits of the longest integer read as itself; CPython refuses to convert longer ones, and
# no bounded field takes anything near this long, so a longer one stands in as a value out of
# every bound (a receiver reads it whole, and refuses it just the same).
_INT_DIGITS_MAX = 4000
_OUT_OF_BOUNDS = 10**_INT_DIGITS_MAX


def _json_int(text: str) -> int:
    if len(text) <= _INT_DIGITS_MAX:
        return int(text)
    return -_OUT_OF_BOUNDS if text.startswith("-") else _OUT_OF_BOUNDS


def _not_json(constant: str) -> float:
    raise ValueError(f"{constant} is not JSON")


def too_deep(payload: bytes) -> bool:
    """More than COMMAND_DEPTH_MAX brackets open at once, outside strings."""
    if payload.count(b"[") + payload.count(b"{") <= COMMAND_DEPTH_MAX:
        return False  # the usual case, without looking at every byte
    depth = 0
    quoted = escaped = False
    for byte in payload:
        if quoted:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # "
                quoted = False
        elif byte == 0x22:
            quoted = True
        elif byte == 0x5B or byte == 0x7B:  # [ {
            depth += 1
            if depth > COMMAND_DEPTH_MAX:
                return True
        elif byte == 0x5D or byte == 0x7D:  # ] }
            depth -= 1
    return False


def parse_command_json(payload: bytes) -> object:
    """The JSON value of a command payload, or None. Strictly RFC 8259, as a receiver's parser
    reads it: UTF-8 only (json.loads would guess UTF-16 or UTF-32, skip a byte order mark and
    let UTF-8-encoded surrogates pass), no NaN or Infinity, at most COMMAND_MAX_BYTES, and
    nested at most COMMAND_DEPTH_MAX deep."""
    if len(payload) > COMMAND_MAX_BYTES or too_deep(payload):
        return None
    try:
        return json.loads(payload.decode("utf-8"), parse_constant=_not_json, parse_int=_json_int)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def decode_command(payload: bytes) -> Command:
    """What a receiver does with ``.../cmd``: the command, or a CommandError saying why not."""
    raw = parse_command_json(payload)
    if not isinstance(raw, dict):
        raise CommandError(AckReason.MALFORMED, "not a JSON object of at most 8 KiB, nested at most 32 deep", None)
    command_id = raw.get("id")
    if not (isinstance(command_id, str) and 0 < len(command_id) <= 32
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in command_id)):
        command_id = None
    op = raw.get("op")
    if not isinstance(op, str) or op not in _OPS:  # a list or an object is no op either
        raise CommandError(AckReason.UNKNOWN_OP, f"op {repr(op)[:40]}", command_id)
    try:
        return COMMAND_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "payload"
        top = str(first["loc"][1]) if len(first["loc"]) > 1 else ""
        reason = _REASON_BY_FIELD.get(top, AckReason.MALFORMED)
        if op == "schedule" and top in _SCHEDULE_FIELDS:
            reason = AckReason.BAD_SCHEDULE
        raise CommandError(reason, f"{where}: {first['msg']}", command_id) from None
