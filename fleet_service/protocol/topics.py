"""Topic tree: ``loa/v1/rx/<receiver id>/<kind>``.

The receiver id is also the receiver's MQTT username and client id, which is what lets every
broker enforce "a receiver publishes and subscribes only under its own topics".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

TOPIC_ROOT = "loa/v1/rx"

# Letters, digits, '-' and '_': safe in a topic level, a username and a file name, and never an
# MQTT wildcard. Hardware ids (IMEI, MAC without colons) fit.
_RECEIVER_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ReceiverId(str):
    """A validated receiver id."""

    # No per-instance __dict__: every message's topic makes one, and the service keeps them as
    # keys of its per-receiver maps (121 bytes each with the dict slot, 105 without).
    __slots__ = ()

    def __new__(cls, value: str) -> ReceiverId:
        if not isinstance(value, str) or not _RECEIVER_ID.match(value):
            raise ValueError(f"invalid receiver id {value!r}: use 1-64 letters, digits, '-' or '_'")
        return super().__new__(cls, value)


class MessageKind(StrEnum):
    STATE = "state"          # receiver -> service, retained, QoS 1 (birth, clean shutdown, Will)
    TELEMETRY = "telemetry"  # receiver -> service, QoS 0
    EVENT = "event"          # receiver -> service, QoS 1
    ACK = "ack"              # receiver -> service, QoS 1 (command outcomes)
    PLAY = "play"            # receiver -> service, retained, QoS 1 (what it plays and why)
    UPDATE = "update"        # receiver -> service, retained, QoS 1 (its firmware update; 1.2)


# The topic levels a receiver may publish under its own id.
RECEIVER_PUBLISHES: tuple[str, ...] = tuple(kind.value for kind in MessageKind)
# The one level the service publishes to, for commands (QoS 1, not retained).
COMMAND_LEVEL = "cmd"
COMMAND_QOS = 1

QOS = {
    MessageKind.STATE: 1,
    MessageKind.TELEMETRY: 0,
    MessageKind.EVENT: 1,
    MessageKind.ACK: 1,
    MessageKind.PLAY: 1,
    MessageKind.UPDATE: 1,
}
RETAIN = {kind: kind in (MessageKind.STATE, MessageKind.PLAY, MessageKind.UPDATE) for kind in MessageKind}


# Enough for every topic of a national fleet (150,000 receivers x 5 kinds).
_PARSED_MAX = 1_000_000
_PARSED: dict[str, Topic] = {}
# One ReceiverId per receiver for all its cached topics: the service keys its per-receiver maps
# with it, so those share one object instead of one per topic kind (105 bytes each).
_RECEIVER_IDS: dict[str, ReceiverId] = {}


@dataclass(frozen=True, slots=True)
class Topic:
    receiver_id: ReceiverId
    kind: MessageKind

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/{self.receiver_id}/{self.kind.value}"

    @classmethod
    def parse(cls, topic: str) -> Topic:
        """Parsed topics are cached: there are only (receivers x kinds) of them."""
        cached = _PARSED.get(topic)
        if cached is not None:
            return cached
        parsed = cls._parse(topic)
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
            _RECEIVER_IDS.clear()
        _PARSED[topic] = parsed
        return parsed

    @classmethod
    def _parse(cls, topic: str) -> Topic:
        prefix = TOPIC_ROOT + "/"
        if not topic.startswith(prefix):
            raise ValueError(f"topic {topic!r} is outside {TOPIC_ROOT}/")
        parts = topic[len(prefix):].split("/")
        if len(parts) != 2:
            raise ValueError(f"topic {topic!r} is not {TOPIC_ROOT}/<receiver>/<kind>")
        try:
            kind = MessageKind(parts[1])
        except ValueError:
            raise ValueError(f"unknown message kind {parts[1]!r} in topic {topic!r}") from None
        receiver_id = _RECEIVER_IDS.get(parts[0])
        if receiver_id is None:
            receiver_id = _RECEIVER_IDS[parts[0]] = ReceiverId(parts[0])
        return cls(receiver_id, kind)


def receiver_topics(receiver_id: str) -> dict[MessageKind, str]:
    rid = ReceiverId(receiver_id)
    return {kind: str(Topic(rid, kind)) for kind in MessageKind}


def command_topic(receiver_id: str) -> str:
    return f"{TOPIC_ROOT}/{ReceiverId(receiver_id)}/{COMMAND_LEVEL}"


def receiver_acl_pattern() -> str:
    """The one topic pattern a receiver may use, in Mosquitto's acl_file syntax ('%u' is the
    username). Mosquitto's dynamic security plugin does not expand '%u'; see broker/mosquitto_dynsec.py."""
    return f"{TOPIC_ROOT}/%u/#"


def service_subscriptions() -> list[tuple[str, int]]:
    """What the service subscribes to, with QoS."""
    return [(f"{TOPIC_ROOT}/+/{kind.value}", QOS[kind]) for kind in MessageKind]
