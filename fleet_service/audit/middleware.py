"""The API's side of the audit log: one ASGI middleware for the whole app records every
POST, PUT, PATCH and DELETE, carried out or refused, once it has been answered."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleet_service.audit import service
from fleet_service.audit.service import MUTATING_METHODS

# Where the endpoints leave who acted (request.state): the principal the auth dependency
# resolved, or the username tried at sign-in.
PRINCIPAL_STATE = "principal"
ATTEMPTED_USER_STATE = "attempted_username"
# What the action was about, when its path does not say (an upload): the endpoint's own text,
# recorded in place of the path parameters.
TARGET_STATE = "audit_target"


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING_METHODS:
            await self.app(scope, receive, send)
            return
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        except Exception:
            await _record(scope, status, failed=True)
            raise
        # Written once the request is over: its own transaction has ended by then (a yield
        # dependency commits after the answer is sent), so the two never wait on each other.
        await _record(scope, status)


async def _record(scope: Scope, status: int, *, failed: bool = False) -> None:
    runtime = getattr(scope["app"].state, "runtime", None)
    if runtime is None:
        return
    state: dict[str, Any] = scope.get("state") or {}
    principal = state.get(PRINCIPAL_STATE)
    actor = principal.username if principal is not None else state.get(ATTEMPTED_USER_STATE)
    route = scope.get("route")
    methods = getattr(route, "methods", None) or ()
    # A route matched by its path only (a method it does not take) did not run.
    route_name = getattr(route, "name", None) if scope["method"] in methods else None
    client = scope.get("client")
    entry = service.api_entry(
        method=scope["method"], path=scope.get("path", ""), route_name=route_name,
        path_params=scope.get("path_params") or {}, actor=actor, status=status,
        client=client[0] if client else None, failed=failed, target=state.get(TARGET_STATE))
    await run_in_threadpool(service.record, runtime.sessions, entry)
