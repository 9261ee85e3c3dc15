"""The FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_service.audit.middleware import AuditMiddleware
from fleet_service.auth.throttle import LoginThrottle
from fleet_service.config import Settings, get_settings
from fleet_service.errors import LoaError, error_body, install_error_handler
from fleet_service.runtime import Runtime

# Swagger UI's and ReDoc's scripts and styles, served by the service itself: district servers
# often have no Internet, and FastAPI's default pages load them from a CDN.
DOCS_ASSETS_URL = "/static/docs"


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None, mqtt: bool = True) -> FastAPI:
    """``mqtt=False`` serves the API alone (``loa serve --role api``: no broker, no ingest; a
    worker elsewhere applies what it records). A given ``runtime`` is used as is and not
    closed by the app."""
    settings = settings or (runtime.settings if runtime else get_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime or Runtime.from_settings(settings)
        app.state.runtime = rt
        try:
            if mqtt:
                from fleet_service.worker.run import worker_role

                # The worker role in this process too: it leads unless another worker does.
                async with worker_role(rt):
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
        docs_url=None,
        redoc_url=None,
    )
    install_error_handler(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large_response(exc.max_bytes)

    app.state.login_throttle = LoginThrottle(settings.api_login_attempts_per_address,
                                             settings.api_login_attempts_per_user)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    # Every POST, PUT, PATCH and DELETE, carried out or refused, goes into the audit log (added
    # last, so it is the outer one: a body refused as too large is recorded too).
    app.add_middleware(AuditMiddleware)
    _include_docs(app)
    _include_routers(app)
    return app


# --- request bodies: bounded before anyone reads them ---------------------------------------

class TooLarge(LoaError):
    status_code = 413
    code = "too_large"


def too_large_response(max_bytes: int) -> JSONResponse:
    error = TooLarge(f"Dữ liệu gửi lên quá lớn: tối đa {max_bytes} byte",
                     f"The request body is too large: at most {max_bytes} bytes")
    # The rest of the body is never read, so the connection cannot carry another request.
    return JSONResponse(status_code=413, content=error_body(error), headers={"Connection": "close"})


class BodyTooLarge(HTTPException):
    """Raised while a body without Content-Length (chunked) is being read, as soon as it passes
    the limit. FastAPI lets an HTTPException from reading the body through as it is (anything
    else would become a 400)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413)
        self.max_bytes = max_bytes


class BodyLimitMiddleware:
    """Refuses a request body larger than ``max_bytes`` with 413, before authentication and
    without reading it: at once when Content-Length announces it, and otherwise as soon as the
    bytes received pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def noting_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, noting_send)
        except BodyTooLarge:
            # Read outside FastAPI's own handling of the body (by a plain Starlette route).
            if started:
                raise
            await too_large_response(self.max_bytes)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it; counting still applies
    return None


# --- the API docs, with their assets served locally -----------------------------------------

def _include_docs(app: FastAPI) -> None:
    assets = resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} — API",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters)

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}", title=f"{app.title} — API",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png", with_google_fonts=False)


def _include_routers(app: FastAPI) -> None:
    from fleet_service.alerts.endpoints import router as alerts_router
    from fleet_service.audit.endpoints import router as audit_router
    from fleet_service.auth.endpoints import router as auth_router
    from fleet_service.commands.endpoints import router as commands_router
    from fleet_service.downloads.endpoints import router as downloads_router
    from fleet_service.firmware.endpoints import router as firmware_router
    from fleet_service.schedules.endpoints import router as schedules_router
    from fleet_service.telemetry.endpoints import router as telemetry_router
    from fleet_service.ingest.endpoints import router as ingest_router
    from fleet_service.registry.endpoints import router as registry_router
    from fleet_service.rollouts.endpoints import router as rollouts_router
    from fleet_service.uptime.endpoints import router as uptime_router

    # The firmware downloads first: FastAPI tries routes in order, and receivers fetching a
    # release make most of the requests during a rollout.
    for router in (downloads_router, auth_router, registry_router, uptime_router, ingest_router, commands_router,
                   schedules_router, telemetry_router, audit_router, firmware_router, rollouts_router,
                   alerts_router):
        app.include_router(router, prefix="/api/v1")
