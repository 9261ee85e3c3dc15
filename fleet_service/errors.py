"""One error hierarchy for the domain, rendered to HTTP by one handler (services stay free of
HTTP). Messages are Vietnamese first, English alongside, because operators read them."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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

    def headers(self) -> dict[str, str] | None:
        return None


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

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(LoaError):
    status_code = 403
    code = "forbidden"


class TooManyRequests(LoaError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message_vi: str, message_en: str, *, retry_after_s: int) -> None:
        super().__init__(message_vi, message_en)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class Unavailable(LoaError):
    status_code = 503
    code = "unavailable"


class BilingualValueError(ValueError):
    """Raised by a schema's validator so that the 422 answer says what is wrong in both
    languages (a plain ValueError's message is shown in English only)."""

    def __init__(self, message_vi: str, message_en: str) -> None:
        super().__init__(message_en)
        self.message_vi = message_vi
        self.message_en = message_en


def error_body(error: LoaError) -> dict[str, dict[str, str]]:
    return {"error": error.as_dict()}


# --- HTTP errors raised by the framework itself (unknown path, wrong method, bad body) -----

_HTTP_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("bad_request", "Yêu cầu không đọc được", "The request could not be read"),
    401: ("not_authenticated", "Cần đăng nhập: gửi 'Authorization: Bearer <mã truy cập>'",
          "Sign in first: send 'Authorization: Bearer <token>'"),
    403: ("forbidden", "Không được phép làm việc này", "This is not allowed"),
    404: ("not_found", "Không có đường dẫn {path}", "There is no path {path}"),
    405: ("method_not_allowed", "Đường dẫn {path} không nhận phương thức {method}",
          "{path} does not accept the {method} method"),
    406: ("not_acceptable", "Không trả lời được theo định dạng yêu cầu", "Cannot answer in the requested format"),
    413: ("too_large", "Dữ liệu gửi lên quá lớn", "The request is too large"),
    415: ("unsupported_media_type", "Kiểu dữ liệu gửi lên không được hỗ trợ",
          "The request's content type is not supported"),
    429: ("too_many_requests", "Quá nhiều yêu cầu, xin thử lại sau", "Too many requests; try again later"),
}


def _allowed_methods(request: Request) -> str | None:
    """Every method some route takes at this path (Starlette's Allow names only the first
    route's, so DELETE /regions would be told to use GET when POST works as well)."""
    allowed = []
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed) or None


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse | Response:
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code < 400 or exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    code, vi, en = _HTTP_ERRORS.get(exc.status_code, (f"http_{exc.status_code}", f"Lỗi HTTP {exc.status_code}",
                                                      f"HTTP error {exc.status_code}"))
    where = {"method": request.method[:16], "path": request.url.path[:200]}
    vi, en = vi.format(**where), en.format(**where)
    if exc.status_code == 405:
        allowed = _allowed_methods(request) or (headers or {}).get("Allow")
        if allowed:
            headers = {**(headers or {}), "Allow": allowed}
    else:
        allowed = None
    if allowed:
        vi, en = f"{vi} (dùng: {allowed})", f"{en} (use: {allowed})"
    body = {"code": code, "message": vi, "message_en": en}
    return JSONResponse(status_code=exc.status_code, content={"error": body}, headers=headers)


# --- request validation: name the field and what is wrong, in both languages -------------

# Parts of a location that are pydantic's own (function-after[...], tagged-union[...]), and
# the model names it puts in a union member's location.
_INTERNAL = re.compile(r"[\[\](),<>]")
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
# An enum member as pydantic writes it in "expected": <Priority.NORMAL: 'normal'> -> 'normal'.
_ENUM_REPR = re.compile(r"<[A-Za-z_][\w.]*: ('[^']*'|\d+)>")
# How a field is named, by where it was sent: (Vietnamese, English).
_SOURCES = {"body": ("trường", "field"), "query": ("tham số", "query parameter"),
            "path": ("tham số đường dẫn", "path parameter"), "header": ("tiêu đề", "header"),
            "cookie": ("cookie", "cookie")}


def _user_parts(loc: Sequence[int | str]) -> list[int | str]:
    """The caller's own field names and list indexes in a location after its source (body,
    query, ...): pydantic's validator and union names are left out. A class name is taken for
    pydantic's own unless it is the last part (an unknown key the caller sent)."""
    parts = list(loc[1:])
    return [p for i, p in enumerate(parts) if isinstance(p, int) or not (
        _INTERNAL.search(p) or (_CLASS_NAME.match(p) and i < len(parts) - 1))]


def _field_name(parts: Sequence[int | str]) -> str:
    """``['slots', 0, 'start']`` -> ``slots[0].start``."""
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


def _problem(error: Mapping[str, Any]) -> tuple[str, str]:
    """What is wrong with one field: (Vietnamese, English)."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}

    def c(key: str) -> str:
        return _ENUM_REPR.sub(lambda m: m.group(1), str(ctx.get(key, "")))

    if kind in ("value_error", "assertion_error"):
        cause = ctx.get("error")
        if isinstance(cause, BilingualValueError):
            return cause.message_vi, cause.message_en
        if isinstance(cause, ValidationError) and cause.errors():
            return _problem(cause.errors()[0])  # a nested model's check (the protocol's own)
        text = str(cause) if cause is not None else str(error.get("msg", ""))
        return "giá trị không hợp lệ", text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    simple: dict[str, tuple[str, str]] = {
        "missing": ("là bắt buộc", "is required"),
        "extra_forbidden": ("không phải là trường được nhận", "is not an accepted field"),
        "string_type": ("phải là chuỗi ký tự", "must be a string"),
        "string_unicode": ("phải là chuỗi ký tự", "must be a string"),
        "int_type": ("phải là số nguyên", "must be an integer"),
        "int_parsing": ("phải là số nguyên", "must be an integer"),
        "int_from_float": ("phải là số nguyên", "must be an integer"),
        "float_type": ("phải là số", "must be a number"),
        "float_parsing": ("phải là số", "must be a number"),
        "finite_number": ("phải là số hữu hạn", "must be a finite number"),
        "bool_type": ("phải là true hoặc false", "must be true or false"),
        "bool_parsing": ("phải là true hoặc false", "must be true or false"),
        "dict_type": ("phải là một đối tượng JSON", "must be a JSON object"),
        "model_type": ("phải là một đối tượng JSON", "must be a JSON object"),
        "model_attributes_type": ("phải là một đối tượng JSON", "must be a JSON object"),
        "list_type": ("phải là một danh sách", "must be a list"),
        "tuple_type": ("phải là một danh sách", "must be a list"),
        "json_invalid": ("không phải JSON hợp lệ", "is not valid JSON"),
        "json_type": ("không phải JSON hợp lệ", "is not valid JSON"),
        "string_pattern_mismatch": ("không đúng định dạng", "has the wrong format"),
        "date_type": ("phải là ngày dạng YYYY-MM-DD", "must be a date, YYYY-MM-DD"),
        "date_parsing": ("phải là ngày dạng YYYY-MM-DD", "must be a date, YYYY-MM-DD"),
        "date_from_datetime_parsing": ("phải là ngày dạng YYYY-MM-DD", "must be a date, YYYY-MM-DD"),
        "date_from_datetime_inexact": ("phải là ngày dạng YYYY-MM-DD", "must be a date, YYYY-MM-DD"),
        "datetime_type": ("phải là thời điểm ISO 8601", "must be an ISO 8601 date and time"),
        "datetime_parsing": ("phải là thời điểm ISO 8601", "must be an ISO 8601 date and time"),
        "datetime_from_date_parsing": ("phải là thời điểm ISO 8601", "must be an ISO 8601 date and time"),
        "datetime_object_invalid": ("phải là thời điểm ISO 8601", "must be an ISO 8601 date and time"),
    }
    if kind in simple:
        return simple[kind]
    bounded: dict[str, tuple[str, str]] = {
        "string_too_short": ("phải có ít nhất {min_length} ký tự", "must have at least {min_length} character(s)"),
        "string_too_long": ("chỉ được tối đa {max_length} ký tự", "must have at most {max_length} character(s)"),
        "too_short": ("phải có ít nhất {min_length} phần tử", "must have at least {min_length} item(s)"),
        "too_long": ("chỉ được tối đa {max_length} phần tử", "must have at most {max_length} item(s)"),
        "greater_than_equal": ("phải lớn hơn hoặc bằng {ge}", "must be at least {ge}"),
        "greater_than": ("phải lớn hơn {gt}", "must be greater than {gt}"),
        "less_than_equal": ("phải nhỏ hơn hoặc bằng {le}", "must be at most {le}"),
        "less_than": ("phải nhỏ hơn {lt}", "must be less than {lt}"),
        "enum": ("phải là một trong: {expected}", "must be one of: {expected}"),
        "literal_error": ("phải là một trong: {expected}", "must be one of: {expected}"),
        "union_tag_invalid": ("'{discriminator}' phải là một trong: {expected_tags}",
                              "'{discriminator}' must be one of: {expected_tags}"),
        "union_tag_not_found": ("thiếu trường '{discriminator}'", "'{discriminator}' is missing"),
    }
    if kind in bounded:
        vi, en = bounded[kind]
        values = {key: c(key) for key in ("min_length", "max_length", "ge", "gt", "le", "lt", "expected",
                                          "discriminator", "expected_tags")}
        vi_values = {key: value.replace("' or '", "' hoặc '") for key, value in values.items()}
        return vi.format(**vi_values), en.format(**values)
    return "giá trị không hợp lệ", _ENUM_REPR.sub(lambda m: m.group(1), str(error.get("msg", "")))


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str, list[dict[str, str]]]:
    """The message naming the first field at fault (and how many others), and one detail per
    problem: where (body.name), the field, and the problem in both languages. The values sent
    are never echoed: they may be passwords."""
    details = []
    for error in errors:
        loc = tuple(error.get("loc") or ())
        vi, en = _problem(error)
        # Unreadable JSON is located by character position, which is no field.
        parts = [] if error.get("type") == "json_invalid" else _user_parts(loc)
        where = ".".join(str(part) for part in [*loc[:1], *parts])
        details.append({"where": where, "field": _field_name(parts), "problem": vi, "problem_en": en})
    if not details:
        return "Dữ liệu gửi lên không hợp lệ", "The request is not valid", details
    first = details[0]
    source = str((errors[0].get("loc") or ("body",))[0])
    if first["field"]:
        vi_kind, en_kind = _SOURCES.get(source, (source, source))
        vi_field, en_field = f"{vi_kind} '{first['field']}'", f"{en_kind} '{first['field']}'"
    else:
        vi_field, en_field = "nội dung gửi lên", "the request body"
    vi = f"Dữ liệu gửi lên không hợp lệ — {vi_field}: {first['problem']}"
    en = f"The request is not valid — {en_field}: {first['problem_en']}"
    if len(details) > 1:
        vi += f" (và {len(details) - 1} lỗi khác)"
        en += f" (and {len(details) - 1} more)"
    return vi, en, details


def install_error_handler(app: FastAPI) -> None:
    @app.exception_handler(LoaError)
    async def _render(_request: Request, exc: LoaError) -> JSONResponse:
        return JSONResponse(status_code=exc.status_code, content=error_body(exc), headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        vi, en, details = describe_validation(exc.errors())
        error = Invalid(vi, en).as_dict()
        return JSONResponse(status_code=422, content={"error": {**error, "details": details}})

    @app.exception_handler(StarletteHTTPException)
    async def _framework_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The framework's own refusals (unknown path, wrong method, unreadable body, security
        # schemes) in the same shape and languages as the domain's.
        return _http_error(request, exc)

    @app.exception_handler(OperationalError)
    async def _database_down(_request: Request, exc: OperationalError) -> JSONResponse:
        # The database is unreachable or refusing connections: say so, and that it is temporary.
        log.error("database unavailable: %s", exc.orig)
        error = Unavailable("Cơ sở dữ liệu tạm thời không truy cập được, xin thử lại sau",
                            "The database is unavailable for now; try again later")
        return JSONResponse(status_code=503, content={"error": error.as_dict()}, headers={"Retry-After": "30"})

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # A value that passed validation but that the database refuses to store or compare:
        # PostgreSQL takes no NUL character in text. Only the database's own message is
        # logged, not the statement's parameters (they may hold a password hash).
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        log.warning("database refused a value: %s", reason)
        error = Invalid("Dữ liệu gửi lên có giá trị không lưu được (ví dụ ký tự NUL)",
                        "The request holds a value the database cannot store (such as a NUL character)")
        return JSONResponse(status_code=422, content=error_body(error))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        # Starlette raises the exception again after this answer, for the server to log.
        body = {"code": "internal", "message": "Lỗi không mong đợi ở máy chủ; đã ghi nhật ký",
                "message_en": "Unexpected server error; it has been logged"}
        return JSONResponse(status_code=500, content={"error": body})
