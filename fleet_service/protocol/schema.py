"""JSON Schema of every payload, generated from the models: the copy other implementations
(the firmware's tests, third-party receivers) validate against. ``schema.json`` beside this
file is kept equal to ``protocol_schema()`` by a test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleet_service.protocol.codec import COMMAND_ADAPTER, PAYLOAD_MODELS
from fleet_service.protocol.messages import COMMAND_MAX_BYTES, PROTOCOL_VERSION
from fleet_service.protocol.topics import COMMAND_LEVEL, COMMAND_QOS, QOS, RETAIN, TOPIC_ROOT

SCHEMA_PATH = Path(__file__).with_name("schema.json")


def protocol_schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Loa receiver protocol v{PROTOCOL_VERSION}",
        "topic_root": TOPIC_ROOT,
        "messages": {
            kind.value: {
                "topic": f"{TOPIC_ROOT}/{{receiver_id}}/{kind.value}",
                "qos": QOS[kind],
                "retain": RETAIN[kind],
                "payload": model.model_json_schema(by_alias=True, mode="validation"),
            }
            for kind, model in PAYLOAD_MODELS.items()
        },
        "commands": {
            "topic": f"{TOPIC_ROOT}/{{receiver_id}}/{COMMAND_LEVEL}",
            "qos": COMMAND_QOS,
            "retain": False,
            "max_bytes": COMMAND_MAX_BYTES,
            "payload": COMMAND_ADAPTER.json_schema(by_alias=True, mode="validation"),
        },
    }


def render() -> str:
    return json.dumps(protocol_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(render(), encoding="utf-8")
    return path
