"""The ``loa`` command. Each domain contributes its own sub-commands (its cli.py)."""

from __future__ import annotations

from enum import StrEnum

import typer

from fleet_service.cli_support import error
from fleet_service.config import get_settings
from fleet_service.runtime import Runtime

app = typer.Typer(
    help="Loa — quản lý thiết bị thu phát thanh IP/4G / fleet management for IP/4G radio receivers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class ServeRole(StrEnum):
    ALL = "all"
    API = "api"
    WORKER = "worker"


@app.command()
def serve(
    host: str | None = typer.Option(None, help="API host (LOA_API_HOST)"),
    port: int | None = typer.Option(None, help="API port (LOA_API_PORT)"),
    role: ServeRole = typer.Option(
        ServeRole.ALL, help="all: API và worker trong một tiến trình / API and worker in one process; "
                            "api: chỉ API, chạy bao nhiêu cũng được / the API only, any number; "
                            "worker: MQTT, gửi lệnh, quy trình; một tiến trình dẫn dắt / MQTT, delivery, "
                            "workflows, one leads at a time (docs/architecture.md)"),
) -> None:
    """Chạy dịch vụ / run the fleet service: API, MQTT ingest and (by default) the embedded broker."""
    import asyncio
    import signal

    import uvicorn

    from fleet_service.app import create_app
    from fleet_service.migrations import upgrade

    settings = get_settings()
    _log_for_operators()
    if role is not ServeRole.ALL and settings.database_url.startswith("sqlite"):
        raise error("tách vai trò api/worker cần PostgreSQL; với SQLite một tiến trình giữ cả hai (loa serve).",
                    "separate api/worker processes need PostgreSQL; with SQLite one process holds both roles "
                    "(loa serve).", 2)
    upgrade(settings.database_url)
    if role is ServeRole.WORKER:
        from fleet_service.worker.run import run_worker_until_stopped

        async def work() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            runtime = Runtime.from_settings(settings)
            try:
                await run_worker_until_stopped(runtime, stop)
            finally:
                runtime.close()

        asyncio.run(work())
        return
    app_ = create_app(settings, mqtt=role is ServeRole.ALL)
    uvicorn.run(app_, host=host or settings.api_host, port=port or settings.api_port)


def _log_for_operators() -> None:
    """What the service says goes to standard error, from INFO up: refused logins, broker and
    database outages, ledger backlogs. Libraries speak only of what goes wrong."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("amqtt", "transitions", "httpx", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


db_app = typer.Typer(no_args_is_help=True)
app.add_typer(db_app, name="db", help="Cơ sở dữ liệu / database")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Nâng cấp lược đồ / migrate the database of LOA_DATABASE_URL to the latest schema."""
    from fleet_service.migrations import upgrade

    upgrade(get_settings().database_url)
    typer.echo("Đã nâng cấp cơ sở dữ liệu / database is at the latest schema")


protocol_app = typer.Typer(no_args_is_help=True)
app.add_typer(protocol_app, name="protocol", help="Giao thức / the receiver protocol")


@protocol_app.command("schema")
def protocol_schema(write: bool = typer.Option(False, help="Rewrite fleet_service/protocol/schema.json")) -> None:
    """In JSON Schema / print the JSON Schema of every payload."""
    from fleet_service.protocol import schema

    if write:
        typer.echo(f"wrote {schema.write()}")
    else:
        typer.echo(schema.render(), nl=False)


def _register_subcommands() -> None:
    from fleet_service.auth.cli import tokens_app, users_app
    from fleet_service.commands.cli import commands_app
    from fleet_service.registry.cli import receivers_app, regions_app, stations_app
    from fleet_service.ingest.cli import status
    from fleet_service.uptime.cli import availability_app

    app.add_typer(regions_app, name="regions", help="Đơn vị hành chính / administrative regions")
    app.add_typer(stations_app, name="stations", help="Đài truyền thanh / stations")
    app.add_typer(receivers_app, name="receivers", help="Thiết bị thu / receivers")
    app.add_typer(users_app, name="users", help="Người dùng / users")
    app.add_typer(tokens_app, name="tokens", help="Mã truy cập API / API tokens")
    app.add_typer(availability_app, name="availability", help="Tỷ lệ hoạt động / availability from the ledger")
    app.add_typer(commands_app, name="commands", help="Lệnh phát/dừng/âm lượng và nhật ký / commands and the audit log")
    from fleet_service.dashboards.cli import dashboards_app
    app.add_typer(dashboards_app, name="dashboards", help="Bảng điều khiển Grafana / Grafana dashboards")
    from fleet_service.audit.cli import audit_app
    app.add_typer(audit_app, name="audit", help="Nhật ký thao tác / the audit log: who did what, when, from where")
    from fleet_service.firmware.cli import firmware_app
    app.add_typer(firmware_app, name="firmware", help="Bản phát hành firmware / firmware releases: build, sign, upload")
    from fleet_service.rollouts.cli import rollouts_app
    app.add_typer(rollouts_app, name="rollouts", help="Cập nhật firmware theo đợt / firmware rollouts: create, watch, pause")
    from fleet_service.alerts.cli import alerts_app, crews_app, incidents_app, silences_app
    app.add_typer(incidents_app, name="incidents", help="Sự cố / incidents: list, show, acknowledge, resolve")
    app.add_typer(silences_app, name="silences", help="Tạm im cảnh báo khi bảo trì / silences for planned work")
    app.add_typer(alerts_app, name="alerts", help="Quy tắc cảnh báo / alert rules: show, set, reset per region")
    app.add_typer(crews_app, name="crews", help="Đội bảo trì / maintenance crews, on-call rotation, channels")
    app.command("status")(status)


# Commands that other packages add to ``loa`` (the simulator's ``simulate`` and ``demo``): each
# entry point of this group names a Typer app (a group of sub-commands) or a function (one
# command). The service finds them here rather than importing them, so that it depends on none.
COMMAND_ENTRY_POINTS = "loa.commands"


def _register_plugins() -> None:
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=COMMAND_ENTRY_POINTS), key=lambda e: e.name):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


_register_subcommands()
_register_plugins()
