"""The FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fleet_service.audit.middleware import AuditMiddleware
from fleet_service.auth.throttle import LoginThrottle
from fleet_service.config import Settings, get_settings
from fleet_service.errors import install_error_handler
from fleet_service.runtime import Runtime


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None, mqtt: bool = True) -> FastAPI:
    """``mqtt=False`` serves the API alone (no broker, no ingest): for tests of the API and for
    read-only replicas. A given ``runtime`` is used as is and not closed by the app."""
    settings = settings or (runtime.settings if runtime else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime or Runtime.from_settings(settings)
        app.state.runtime = rt
        try:
            if mqtt:
                from fleet_service.mqtt.lifecycle import run_mqtt_side
                from fleet_service.telemetry.service import run_telemetry

                # Telemetry starts first and stops last, so that ingest's last messages are written.
                async with run_telemetry(rt), run_mqtt_side(rt):
                    yield
            else:
                yield
        finally:
            if owned:
                rt.close()

    app = FastAPI(
        title="Loa",
        summary="Quản lý thiết bị thu phát thanh IP/4G — fleet management for IP/4G radio receivers",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handler(app)
    app.state.login_throttle = LoginThrottle(settings.api_login_attempts_per_address,
                                             settings.api_login_attempts_per_user)
    # Every POST, PUT, PATCH and DELETE, carried out or refused, goes into the audit log.
    app.add_middleware(AuditMiddleware)
    _include_routers(app)
    return app


def _include_routers(app: FastAPI) -> None:
    from fleet_service.audit.endpoints import router as audit_router
    from fleet_service.auth.endpoints import router as auth_router
    from fleet_service.commands.endpoints import router as commands_router
    from fleet_service.schedules.endpoints import router as schedules_router
    from fleet_service.telemetry.endpoints import router as telemetry_router
    from fleet_service.ingest.endpoints import router as ingest_router
    from fleet_service.registry.endpoints import router as registry_router
    from fleet_service.uptime.endpoints import router as uptime_router

    for router in (auth_router, registry_router, uptime_router, ingest_router, commands_router,
                   schedules_router, telemetry_router, audit_router):
        app.include_router(router, prefix="/api/v1")
