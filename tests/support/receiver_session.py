"""A receiver's MQTT session at the protocol level (aiomqtt): its Last Will, its subscription
to its commands, and its birth, as every receiver opens one. Tests that play receivers by hand
build on it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt


@asynccontextmanager
async def receiver_session(port: int, receiver_id: str, password: str, session: int,
                           **birth: Any) -> AsyncIterator[aiomqtt.Client]:
    """Connected, subscribed to ``loa/v1/rx/<id>/cmd`` and born (``birth``: more fields of the
    birth, such as ``fw`` and ``hw``)."""
    base = f"loa/v1/rx/{receiver_id}"
    will = aiomqtt.Will(f"{base}/state", json.dumps({"v": 1, "state": "offline", "session": session,
                                                     "reason": "lost"}), qos=1, retain=True)
    async with aiomqtt.Client("127.0.0.1", port, identifier=receiver_id, username=receiver_id, password=password,
                              will=will, keepalive=30) as client:
        await client.subscribe(f"{base}/cmd", qos=1)
        await client.publish(f"{base}/state", json.dumps({"v": 1, "state": "online", "session": session,
                                                          "reason": "boot", **birth}), qos=1, retain=True)
        yield client
