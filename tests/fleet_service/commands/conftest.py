"""A running service (embedded broker, ingest, command delivery) with its API in the test's
loop, a small fleet, users of two communes, and receivers scripted at the MQTT level."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import httpx
import pytest

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.db import session_scope
from fleet_service.protocol import Ack, decode_command
from fleet_service.protocol.codec import CommandError
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, RegionCreate, StationCreate
from fleet_service.runtime import Runtime
from tests.support.receiver_session import receiver_session
from tests.support.service import running_service, service_settings


@dataclass
class Fleet:
    runtime: Runtime
    api: httpx.AsyncClient
    admin: dict[str, str]
    operator_x: dict[str, str]        # operator of commune X, not allowed emergency
    emergency_x: dict[str, str]       # operator of commune X, allowed emergency
    ids: dict[str, int]
    passwords: dict[str, str]


@pytest.fixture
async def fleet(db_url: str) -> AsyncIterator[Fleet]:
    settings = service_settings(db_url)
    async with running_service(settings) as runtime:
        with session_scope(runtime.sessions) as s:
            district = registry.create_region(s, RegionCreate(name="Đại Từ", level="huyện"))
            x = registry.create_region(s, RegionCreate(name="Hùng Sơn", level="thị trấn", parent_id=district.id))
            y = registry.create_region(s, RegionCreate(name="Quân Chu", level="thị trấn", parent_id=district.id))
            sx = registry.create_station(s, StationCreate(region_id=x.id, name="Đài Hùng Sơn"))
            sy = registry.create_station(s, StationCreate(region_id=y.id, name="Đài Quân Chu"))
            passwords = {}
            for rid, station in (("x-1", sx.id), ("x-2", sx.id), ("y-1", sy.id)):
                registry.register_receiver(s, ReceiverCreate(id=rid, hardware_id=f"hw-{rid}", station_id=station))
                passwords[rid] = registry.provision(s, rid).mqtt_password
            auth.create_user(s, "admin", role="admin")
            op = auth.create_user(s, "op.hungson", role="operator", region_id=x.id)
            em = auth.create_user(s, "chutich.hungson", role="operator", region_id=x.id, emergency=True)
            tokens = {name: auth.issue_token(s, uid, "t")[1]
                      for name, uid in (("admin", auth.get_user(s, "admin").id), ("op", op.id), ("em", em.id))}
            ids = {"district": district.id, "x": x.id, "y": y.id, "sx": sx.id, "sy": sy.id}
        app = create_app(runtime=runtime, mqtt=False)
        app.state.runtime = runtime
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://loa") as api:
            yield Fleet(runtime, api, *({"Authorization": f"Bearer {tokens[k]}"} for k in ("admin", "op", "em")),
                        ids, passwords)


@dataclass
class ScriptedReceiver:
    """A receiver at the protocol level: births, then answers every command with ``answer``
    (a function of the command returning the acks to send, as (status, why) or (status, why,
    another command id)). Keeps what it was sent."""

    receiver_id: str
    password: str
    port: int
    answer: Callable[[Any], list[tuple[Any, ...]]] = lambda _cmd: [("accepted", None), ("done", None)]
    received: list[bytes] = field(default_factory=list)
    session: int = 1

    @asynccontextmanager
    async def online(self) -> AsyncIterator[ScriptedReceiver]:
        base = f"loa/v1/rx/{self.receiver_id}"
        async with receiver_session(self.port, self.receiver_id, self.password, self.session, fw="test") as client:
            task = asyncio.create_task(self._serve(client, base))
            try:
                yield self
            finally:
                # aiomqtt's message iterator can miss a cancellation that arrives as a message
                # does (then it waits on): the disconnect below ends it in any case.
                task.cancel()
                await asyncio.wait([task], timeout=2)
        await asyncio.gather(task, return_exceptions=True)
        self.session += 1

    async def _serve(self, client: aiomqtt.Client, base: str) -> None:
        async for message in client.messages:
            payload = bytes(message.payload)  # type: ignore[arg-type]
            self.received.append(payload)
            try:
                command = decode_command(payload)
                command_id = command.command_id
                answers = self.answer(command)
            except CommandError as exc:
                command_id = exc.command_id or "?"
                answers = [("rejected", exc.reason.value)]
            for status, why, *other in answers:
                ack = Ack(session=self.session, command_id=other[0] if other else command_id, status=status,
                          reason=why, sent_at=0)
                await client.publish(f"{base}/ack", ack.model_dump_json(by_alias=True, exclude_none=True), qos=1)


@pytest.fixture
def receiver(fleet: Fleet) -> Callable[..., ScriptedReceiver]:
    def make(receiver_id: str, **kwargs: Any) -> ScriptedReceiver:
        return ScriptedReceiver(receiver_id, fleet.passwords[receiver_id], fleet.runtime.settings.mqtt_port, **kwargs)

    return make
