"""The receiver protocol, defined once.

docs/protocol.md explains it for people; the pydantic models here are the machine-readable
definition used by the service, the simulator and the conformance suite. The JSON Schema in
``schema.json`` beside this file is generated from these models (``loa protocol schema``) so
that implementations in other languages can validate against it.
"""

from fleet_service.protocol.messages import (
    PROTOCOL_VERSION,
    AmpState,
    Event,
    EventKind,
    ResetCause,
    State,
    StateMessage,
    StreamState,
    Telemetry,
)
from fleet_service.protocol.topics import (
    TOPIC_ROOT,
    MessageKind,
    ReceiverId,
    Topic,
    receiver_topics,
    service_subscriptions,
)
from fleet_service.protocol.codec import DecodeError, Decoded, decode

__all__ = [
    "PROTOCOL_VERSION",
    "TOPIC_ROOT",
    "AmpState",
    "DecodeError",
    "Decoded",
    "Event",
    "EventKind",
    "MessageKind",
    "ReceiverId",
    "ResetCause",
    "State",
    "StateMessage",
    "StreamState",
    "Telemetry",
    "Topic",
    "decode",
    "receiver_topics",
    "service_subscriptions",
]
