"""Receivers at the MQTT level that answer ``update`` commands as protocol 1.2 says: accepted,
then the update status step by step (retained, on .../update), then the command's outcome. A
repeated command id is answered ``dup`` and not carried out again, as a real receiver does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from tests.support.receiver_session import receiver_session

HARDWARE = "esp32-a7670"
# How a receiver carries out an update: the steps it reports, and its answer.
CONFIRMS = [("offered", {}), ("downloading", {"pct": 50, "got": 4000}), ("downloaded", {"got": 8000}),
            ("verified", {}), ("installing", {}), ("rebooting", {}), ("confirmed", {"got": 8000})]
FAILS = [("offered", {}), ("downloading", {"pct": 40, "got": 3000}), ("failed", {"why": "hash", "got": 8100})]
SILENT: list[tuple[str, dict[str, Any]]] = []


@dataclass
class UpdatingReceiver:
    receiver_id: str
    password: str
    port: int
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=lambda: list(CONFIRMS))
    # Set: the receiver goes on with an update only once it is set (a slow canary).
    gate: asyncio.Event | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)  # every update command received
    session: int = 1
    firmware: str = "loa-fw-1.3.0"
    _done: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # Updates under way, as a real receiver keeps them in flash: carried on at the next session.
    _under_way: dict[str, dict[str, Any]] = field(default_factory=dict)
    _running: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def offers(self) -> int:
        """Distinct update commands received (a repeated id is one)."""
        return len({u["id"] for u in self.updates})

    @asynccontextmanager
    async def online(self) -> AsyncIterator[UpdatingReceiver]:
        base = f"loa/v1/rx/{self.receiver_id}"
        async with receiver_session(self.port, self.receiver_id, self.password, self.session, fw=self.firmware,
                                    hw=HARDWARE) as client:
            task = asyncio.create_task(self._serve(client, base))
            updates = [asyncio.create_task(self._update(client, base, command, resumed=True))
                       for command in list(self._under_way.values())]
            self._running = updates
            try:
                yield self
            finally:
                for running in [task, *self._running]:
                    running.cancel()
                await asyncio.wait([task], timeout=2)
        await asyncio.gather(task, return_exceptions=True)
        self.session += 1

    async def _serve(self, client: aiomqtt.Client, base: str) -> None:
        async for message in client.messages:
            command = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            if command.get("op") != "update":
                continue
            self.updates.append(command)
            self._running.append(asyncio.create_task(self._update(client, base, command)))

    async def _ack(self, client: aiomqtt.Client, base: str, cid: str, st: str, why: str | None = None,
                   dup: bool = False) -> None:
        ack: dict[str, Any] = {"v": 1, "session": self.session, "id": cid, "st": st, "ts": 0}
        if why:
            ack["why"] = why
        if dup:
            ack["dup"] = True
        await client.publish(f"{base}/ack", json.dumps(ack), qos=1)

    async def _update(self, client: aiomqtt.Client, base: str, command: dict[str, Any],
                      resumed: bool = False) -> None:
        cid = command["id"]
        if not resumed:
            if cid in self._done:
                await self._ack(client, base, cid, *self._done[cid], dup=True)
                return
            self._done[cid] = ("accepted", None)
            if not self.steps:
                return  # says nothing at all
            self._under_way[cid] = command
            await self._ack(client, base, cid, "accepted")
        for n, (state, extra) in enumerate(self.steps):
            if resumed and n == 0:
                continue
            if n == 1 and self.gate is not None:
                await self.gate.wait()
            status = {"v": 1, "session": self.session, "ts": 0, "id": cid, "rel": command["rel"],
                      "ver": command["ver"], "st": state, **extra}
            await client.publish(f"{base}/update", json.dumps(status), qos=1, retain=True)
            await asyncio.sleep(0.02)
        last, extra = self.steps[-1]
        outcome = {"confirmed": ("done", None), "failed": ("failed", extra.get("why")),
                   "rolled_back": ("failed", "rolled_back")}.get(last)
        self._under_way.pop(cid, None)
        if outcome is not None:
            self._done[cid] = outcome
            await self._ack(client, base, cid, *outcome)
