"""Decode an MQTT message once, at the edge, into a typed value, or say precisely why not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ValidationError

from fleet_service.protocol.messages import PROTOCOL_VERSION, Event, StateMessage, Telemetry
from fleet_service.protocol.topics import MessageKind, Topic

PAYLOAD_MODELS: dict[MessageKind, type[BaseModel]] = {
    MessageKind.STATE: StateMessage,
    MessageKind.TELEMETRY: Telemetry,
    MessageKind.EVENT: Event,
}


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
    message: StateMessage | Telemetry | Event


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
