"""Decode an MQTT message once, at the edge, into a typed value, or say precisely why not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, TypeAdapter, ValidationError

from fleet_service.protocol.messages import (
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
)
from fleet_service.protocol.topics import MessageKind, Topic

PAYLOAD_MODELS: dict[MessageKind, type[BaseModel]] = {
    MessageKind.STATE: StateMessage,
    MessageKind.TELEMETRY: Telemetry,
    MessageKind.EVENT: Event,
    MessageKind.ACK: Ack,
    MessageKind.PLAY: PlayStatus,
}
COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)

ReceiverMessage = StateMessage | Telemetry | Event | Ack | PlayStatus


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
            version = json.loads(payload).get("v")
        except (ValueError, AttributeError):
            version = None
        return DecodeError(
            DropReason.VERSION, f"protocol version {version!r}, this service speaks {PROTOCOL_VERSION}", topic
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
_REASON_BY_FIELD = {"vol": AckReason.VOLUME_RANGE, "url": AckReason.BAD_URL, "set": AckReason.UNKNOWN_SETTING}


def decode_command(payload: bytes) -> Command:
    """What a receiver does with ``.../cmd``: the command, or a CommandError saying why not."""
    try:
        raw = json.loads(payload) if len(payload) <= COMMAND_MAX_BYTES else None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raw = None
    if not isinstance(raw, dict):
        raise CommandError(AckReason.MALFORMED, "not a JSON object of at most 8 KiB", None)
    command_id = raw.get("id")
    if not (isinstance(command_id, str) and 0 < len(command_id) <= 32
            and all(c.isascii() and (c.isalnum() or c in "-_") for c in command_id)):
        command_id = None
    if raw.get("op") not in _OPS:
        raise CommandError(AckReason.UNKNOWN_OP, f"op {raw.get('op')!r}", command_id)
    try:
        return COMMAND_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "payload"
        top = str(first["loc"][1]) if len(first["loc"]) > 1 else ""
        reason = _REASON_BY_FIELD.get(top, AckReason.MALFORMED)
        if raw.get("op") == "schedule" and top in ("slots", "ver", "tz", ""):
            reason = AckReason.BAD_SCHEDULE
        raise CommandError(reason, f"{where}: {first['msg']}", command_id) from None
