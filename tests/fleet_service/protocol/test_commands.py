"""decode_command: the verdict every receiver reaches on what arrives on its cmd topic."""

from __future__ import annotations

import json

import pytest

from fleet_service.protocol import AckReason, CommandError, ScheduleCommand, decode_command

BASE = {"v": 1, "id": "c1", "ts": 1, "exp": 2}
SLOT = {"id": "m", "s": "05:30", "e": "06:00", "u": "http://a/b.mp3"}


def verdict(payload: bytes) -> tuple[AckReason, str | None]:
    with pytest.raises(CommandError) as caught:
        decode_command(payload)
    return caught.value.reason, caught.value.command_id


@pytest.mark.parametrize(("body", "reason"), [
    ({"op": "volume", "vol": 101}, AckReason.VOLUME_RANGE),
    ({"op": "play", "url": "ftp://a/b"}, AckReason.BAD_URL),
    ({"op": "config", "set": {"colour": "red"}}, AckReason.UNKNOWN_SETTING),
    ({"op": "dance"}, AckReason.UNKNOWN_OP),
    ({"op": "schedule", "ver": 3, "slots": [SLOT, {**SLOT, "id": "n", "s": "05:45", "e": "06:30"}]},
     AckReason.BAD_SCHEDULE),
    ({"op": "stop", "v": 2}, AckReason.MALFORMED),
    ({"op": "schedule", "v": 2, "ver": 3, "slots": [SLOT]}, AckReason.MALFORMED),
])
def test_invalid_commands_are_refused_with_the_protocols_reason(body, reason):
    assert verdict(json.dumps({**BASE, **body}).encode()) == (reason, "c1")


@pytest.mark.parametrize("payload", [b"[1]", b"not json", b"[" * 3000, b"{" * 3000, b'{"op":"stop"}' + b" " * 9000])
def test_payloads_that_are_not_a_command_object_are_malformed_without_an_id(payload):
    assert verdict(payload) == (AckReason.MALFORMED, None)


def test_a_schedule_keeps_its_own_version_beside_the_protocol_version():
    command = decode_command(json.dumps({**BASE, "op": "schedule", "ver": 7, "slots": [SLOT]}).encode())
    assert isinstance(command, ScheduleCommand)
    assert command.schedule_version == 7 and command.version == 1
