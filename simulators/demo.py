"""``loa demo``: the embedded broker, the service and SQLite, with a simulated fleet for Đại Từ
district whose receivers lose their link, lose power, flap and reboot, so that the live view and
the availability figures have something to show.

It lives with the simulator, which builds on the service, so that the service never imports
the simulator: ``loa`` finds the command (simulators/cli.py) through the ``loa.commands``
entry points in pyproject.toml."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import typer
import uvicorn

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.migrations import upgrade
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate
from fleet_service.runtime import Runtime
from fleet_service.timefmt import local_text
from simulators.firmware import unavailable_reason
from simulators.fleet import Fleet
from simulators.scenario import FaultKind, Scenario
from simulators.stream_server import StreamServer

log = logging.getLogger(__name__)

# Demo pace: receivers report every 15 s and use a 10 s keepalive, so a silent link is seen
# within 15 s instead of the 90 s of the field defaults.
DEMO_TELEMETRY_INTERVAL_S = 15.0
DEMO_KEEPALIVE_S = 10
# Each round of faults lasts this long; a new random round follows.
DEMO_ROUND_S = 300.0
# Receivers that run the real MicroPython firmware (a process each) beside the virtual ones,
# when the micropython interpreter is installed.
DEMO_FIRMWARE_RECEIVERS = 3
# The demo's test stream: what receivers fetch and play from a `play` (64 kbit/s, as district
# streams and the simulator's nominal bitrate).
DEMO_STREAM_KBPS = 64
DEMO_STREAM_PATH = "/live.mp3"


@dataclass
class DemoPorts:
    mqtt: int
    api: int
    notes: list[str]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def any_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def choose_ports(mqtt: int | None, api: int | None) -> DemoPorts:
    """The usual ports when they are free; otherwise any free port, and say so."""
    notes = []
    chosen = []
    for name, asked, usual in (("MQTT", mqtt, 1883), ("API", api, 8000)):
        if asked:
            chosen.append(asked)
            continue
        if port_is_free(usual):
            chosen.append(usual)
        else:
            port = any_free_port()
            notes.append(f"Cổng {usual} đang bận, dùng {port} cho {name} / port {usual} is taken, {name} uses {port}")
            chosen.append(port)
    return DemoPorts(chosen[0], chosen[1], notes)


@dataclass
class Inventory:
    credentials: dict[str, str]   # receiver id: MQTT password
    admin_token: str
    operator_token: str           # the operator of Hùng Sơn
    district_id: int
    station_id: int               # a station of Hùng Sơn, the operator's commune


def prepare_inventory(runtime: Runtime, receivers_per_station: int) -> Inventory:
    """Regions and stations of Đại Từ, receivers at every station, their MQTT passwords, and an
    admin and a commune operator with API tokens."""
    credentials: dict[str, str] = {}
    with session_scope(runtime.sessions) as session:
        registry.import_regions(session, registry.demo_inventory())
        district = next(r for r in registry.list_regions(session) if r.code == "thai-nguyen.dai-tu")
        stations = registry.list_stations(session, region_id=district.id)
        for number, station in enumerate(stations, start=1):
            for k in range(1, receivers_per_station + 1):
                rid = f"dt{number:02d}-{k}"
                registry.register_receiver(session, ReceiverCreate(
                    id=rid, hardware_id=f"8601234{number:04d}{k:04d}", station_id=station.id,
                    firmware_version="loa-sim-1.0.0"))
                credentials[rid] = registry.provision(session, rid).mqtt_password
        admin = auth.create_user(session, "demo-admin", role="admin", full_name="Quản trị demo")
        _, admin_token = auth.issue_token(session, admin.id, "demo")
        hung_son = next(r for r in registry.list_regions(session) if r.code == "thai-nguyen.dai-tu.hung-son")
        operator = auth.create_user(session, "op-hung-son", role="operator", region_id=hung_son.id,
                                    full_name="Cán bộ đài Hùng Sơn")
        _, operator_token = auth.issue_token(session, operator.id, "demo")
        station_id = registry.list_stations(session, region_id=hung_son.id)[0].id
        district_id = district.id
    return Inventory(credentials, admin_token, operator_token, district_id, station_id)


def stream_lines(url: str, api: str, token: str, station_id: int) -> str:
    """The test stream, and a play of it ready to paste."""
    return (f"  Luồng thử / test stream:         {url}\n"
            f"  Phát thử ở đài Hùng Sơn / play it at the Hùng Sơn station:\n"
            f"      loa commands send play --station {station_id} --url {url} --api {api} --token {token}")


def firmware_note(receivers: list[str], reason: str | None) -> str:
    """What the operator is told about real firmware receivers in the demo."""
    if reason is not None:
        return (f"Không chạy firmware thật: {reason} — chỉ có thiết bị ảo / "
                f"no real firmware receivers: {reason}; virtual receivers only")
    return (f"Thiết bị chạy firmware thật (MicroPython) / real firmware receivers: {', '.join(receivers)}")


async def run_demo(directory: Path, receivers_per_station: int, duration: float | None, mqtt_port: int | None,
                   api_port: int | None, keep: bool, seed: int,
                   firmware_receivers: int = DEMO_FIRMWARE_RECEIVERS) -> None:
    if directory.exists() and not keep:
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ports = choose_ports(mqtt_port, api_port)
    settings = Settings(
        environment="local",
        database_url=f"sqlite:///{directory / 'demo.db'}",
        broker="embedded",
        mqtt_port=ports.mqtt,
        api_port=ports.api,
        telemetry_interval_s=DEMO_TELEMETRY_INTERVAL_S,
        inactivity_timeout_s=DEMO_TELEMETRY_INTERVAL_S * 3 + 10,
        startup_grace_s=10,
    )
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    inventory = await asyncio.to_thread(prepare_inventory, runtime, receivers_per_station)
    credentials, admin_token, operator_token = inventory.credentials, inventory.admin_token, inventory.operator_token
    district_id = inventory.district_id
    # A real stream on a free loopback port, so that a play in the demo has something to fetch.
    stream = StreamServer(DEMO_STREAM_KBPS)
    stream.name = "Loa demo"
    stream.start()
    stream_url = stream.url(DEMO_STREAM_PATH)

    server = uvicorn.Server(uvicorn.Config(create_app(runtime=runtime), host=settings.api_host,
                                           port=settings.api_port, log_level="warning", lifespan="on"))
    server_task = asyncio.create_task(server.serve())
    while not server.started:
        if server_task.done():
            stream.stop()
            await server_task  # raises what stopped it
            raise RuntimeError("the API server stopped before it started")
        await asyncio.sleep(0.05)

    reason = unavailable_reason() if firmware_receivers else "0 asked"
    real = sorted(credentials)[:firmware_receivers] if reason is None else []
    api = f"http://{settings.api_host}:{settings.api_port}"
    cli_env = f"LOA_API_URL={api} LOA_API_TOKEN={admin_token}"
    for note in ports.notes:
        typer.echo(note)
    typer.echo(firmware_note(real, reason))
    typer.echo(f"""
Loa demo — huyện Đại Từ, tỉnh Thái Nguyên: {len(credentials)} thiết bị thu / receivers ({receivers_per_station} mỗi đài / per station)
  Broker MQTT (nhúng / embedded):  127.0.0.1:{settings.mqtt_port}
  Tài liệu API / API docs:         {api}/docs   (Authorize: dán mã / paste the token)
  Mã quản trị / admin token:       {admin_token}
  Mã cán bộ Hùng Sơn / operator:   {operator_token}   (chỉ thấy Hùng Sơn / sees Hùng Sơn only)
  Thiết bị đang mất / which are down:
      curl -H 'Authorization: Bearer {admin_token}' '{api}/api/v1/live/receivers?state=offline'
      {cli_env} loa status
  Tỷ lệ hoạt động huyện / district availability:
      curl -H 'Authorization: Bearer {admin_token}' '{api}/api/v1/regions/{district_id}/availability'
      {cli_env} loa availability region {district_id}
{stream_lines(stream_url, api, operator_token, inventory.station_id)}
  Dữ liệu / data: {directory}
Dừng: Ctrl-C / stop with Ctrl-C
""")

    fleet = Fleet("127.0.0.1", settings.mqtt_port, credentials, keepalive=DEMO_KEEPALIVE_S,
                  telemetry_interval=DEMO_TELEMETRY_INTERVAL_S, ground_truth=directory / "ground-truth.jsonl",
                  seed=seed, firmware_receivers=real, firmware_dir=directory / "firmware",
                  update_keys=settings.firmware_keys)  # the releases the demo's service accepts
    started = time.monotonic()
    try:
        await fleet.start()
        receivers = sorted(credentials)
        round_number = 0
        while duration is None or time.monotonic() - started < duration:
            left = None if duration is None else duration - (time.monotonic() - started)
            round_s = DEMO_ROUND_S if left is None else min(DEMO_ROUND_S, left)
            # About half the receivers get one fault per round; a few clocks are skewed.
            scenario = Scenario.random(receivers, round_s, seed=seed + round_number, faults_per_receiver=(0, 1),
                                       kinds=tuple(FaultKind), max_clock_skew=120, skewed_fraction=0.05)
            status = asyncio.create_task(_report_status(runtime, interval=30))
            try:
                await fleet.run_scenario(scenario)
            finally:
                status.cancel()
            round_number += 1
    finally:
        with contextlib.suppress(Exception):
            await fleet.stop()
        server.should_exit = True
        await server_task
        stream.stop()
        runtime.close()
    _print_status(runtime, final=True)


async def _report_status(runtime: Runtime, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        _print_status(runtime)


def _print_status(runtime: Runtime, final: bool = False) -> None:
    ingest = runtime.ingest
    if ingest is None:
        return
    online, offline = ingest.tracker.counts()
    dropped = sum(ingest.counters.dropped.values())
    label = "Kết thúc / final" if final else local_text(datetime.now(UTC))
    typer.echo(f"[{label}] trực tuyến / online {online}, mất kết nối / offline {offline}, "
               f"bản tin nhận / messages {ingest.counters.accepted}, bỏ / dropped {dropped}, "
               f"chuyển trạng thái / transitions {ingest.counters.transitions}")
