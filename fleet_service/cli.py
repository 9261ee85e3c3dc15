"""The ``loa`` command. Each domain contributes its own sub-commands (its cli.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from fleet_service.config import get_settings
from fleet_service.runtime import Runtime

app = typer.Typer(
    help="Loa — quản lý thiết bị thu phát thanh IP/4G / fleet management for IP/4G radio receivers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@contextmanager
def cli_runtime() -> Iterator[Runtime]:
    """A runtime for one CLI command: the database of LOA_DATABASE_URL, migrated to head."""
    from fleet_service.migrations import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    runtime = Runtime.from_settings(settings)
    try:
        yield runtime
    finally:
        runtime.close()


def _register_subcommands() -> None:
    from fleet_service.auth.cli import tokens_app, users_app
    from fleet_service.registry.cli import receivers_app, regions_app, stations_app

    app.add_typer(regions_app, name="regions", help="Đơn vị hành chính / administrative regions")
    app.add_typer(stations_app, name="stations", help="Đài truyền thanh / stations")
    app.add_typer(receivers_app, name="receivers", help="Thiết bị thu / receivers")
    app.add_typer(users_app, name="users", help="Người dùng / users")
    app.add_typer(tokens_app, name="tokens", help="Mã truy cập API / API tokens")


_register_subcommands()
