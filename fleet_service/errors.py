"""One error hierarchy for the domain, rendered to HTTP by one handler (services stay free of
HTTP). Messages are Vietnamese first, English alongside, because operators read them."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class LoaError(Exception):
    status_code = 400
    code = "error"

    def __init__(self, message_vi: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_vi = message_vi
        self.message_en = message_en

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message_vi, "message_en": self.message_en}


class NotFound(LoaError):
    status_code = 404
    code = "not_found"


class Conflict(LoaError):
    status_code = 409
    code = "conflict"


class Invalid(LoaError):
    status_code = 422
    code = "invalid"


class NotAuthenticated(LoaError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(LoaError):
    status_code = 403
    code = "forbidden"


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(LoaError)
    async def _render(_request: Request, exc: LoaError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticated) else None
        return JSONResponse(status_code=exc.status_code, content={"error": exc.as_dict()}, headers=headers)
