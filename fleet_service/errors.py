"""One error hierarchy for the domain, rendered to HTTP by one handler (services stay free of
HTTP). Messages are Vietnamese first, English alongside, because operators read them."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)


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


class Unavailable(LoaError):
    status_code = 503
    code = "unavailable"


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(LoaError)
    async def _render(_request: Request, exc: LoaError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, NotAuthenticated) else None
        return JSONResponse(status_code=exc.status_code, content={"error": exc.as_dict()}, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"where": ".".join(str(part) for part in error["loc"]), "problem": error["msg"]}
            for error in exc.errors()
        ]
        error = Invalid("Dữ liệu gửi lên không hợp lệ", "The request is not valid").as_dict()
        return JSONResponse(status_code=422, content={"error": {**error, "details": problems}})

    from broker.mosquitto_dynsec import BrokerAccountError

    @app.exception_handler(BrokerAccountError)
    async def _broker_refused(_request: Request, exc: BrokerAccountError) -> JSONResponse:
        # The registry change is committed; only the broker is behind. The service brings the
        # broker's logins in line with the registry at its next start (sync), or provision again.
        log.error("broker did not take a login change: %s", exc)
        error = Unavailable(
            "Đã lưu, nhưng broker MQTT chưa cập nhật được; hãy thử lại (cấp lại mật khẩu hoặc thu hồi lại)",
            f"Saved, but the MQTT broker could not be updated ({exc}); try again (provision or revoke again)",
        )
        return JSONResponse(status_code=503, content={"error": error.as_dict()}, headers={"Retry-After": "30"})

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        # The database is unreachable or refusing connections: say so, and that it is temporary.
        log.error("database unavailable: %s", exc.orig)
        error = Unavailable("Cơ sở dữ liệu tạm thời không truy cập được, xin thử lại sau",
                            "The database is unavailable for now; try again later")
        return JSONResponse(status_code=503, content={"error": error.as_dict()}, headers={"Retry-After": "30"})
