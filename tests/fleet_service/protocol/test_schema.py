import json

import jsonschema
import pytest

from fleet_service.protocol.schema import SCHEMA_PATH, protocol_schema, render


def test_committed_schema_matches_the_models():
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render(), "run: loa protocol schema --write"


def test_schema_accepts_a_valid_birth_and_rejects_a_bad_one():
    schema = protocol_schema()["messages"]["state"]["payload"]
    jsonschema.validate({"v": 1, "state": "online", "session": 1, "reason": "boot", "fw": "0.1.0"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"v": 1, "state": "online", "session": -1, "reason": "boot"}, schema)


def test_qos_and_retain_per_kind():
    messages = json.loads(render())["messages"]
    assert (messages["state"]["qos"], messages["state"]["retain"]) == (1, True)
    assert (messages["telemetry"]["qos"], messages["telemetry"]["retain"]) == (0, False)
    assert (messages["event"]["qos"], messages["event"]["retain"]) == (1, False)
