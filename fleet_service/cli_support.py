"""What the ``loa`` commands share: bilingual messages, tables, and the client through which
commands that read or act on the fleet talk to the running service's API.

A leaf: it imports nothing of the service's domains (pyproject.toml's import-linter contracts
hold it to that), so that every domain's cli.py may use it.

Commands that read or act on the fleet ask the running service's API (LOA_API_URL,
LOA_API_TOKEN) instead of the database: the token decides what the caller may see and do,
exactly as on the API, and no command opens (or creates) a database file. Every failure ends
the command with one bilingual line on standard error: no token, a token the service refuses,
a service that does not answer (saying where it was looked for), and the API's own refusals
(a 404 for what lies outside the caller's region, as for what does not exist)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer

DEFAULT_API_URL = "http://127.0.0.1:8000"
# Long enough for a fleet-wide answer on a small server; a dead service fails at once (refused).
TIMEOUT_S = 30.0

ApiUrl = Annotated[str, typer.Option("--api", envvar="LOA_API_URL", help="Địa chỉ dịch vụ / service URL")]
Token = Annotated[str, typer.Option("--token", envvar="LOA_API_TOKEN", help="Mã truy cập / API token")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say ``message`` (already bilingual) on standard error; the exit to raise."""
    typer.echo(message, err=True)
    return typer.Exit(code)


def error(vi: str, en: str, code: int = 1) -> typer.Exit:
    """Say what went wrong on standard error, Vietnamese first, English below; the exit to
    raise (2 for a usage error, as click does)."""
    typer.echo(f"Lỗi: {vi}\nError: {en}", err=True)
    return typer.Exit(code)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("—" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    for line in [list(headers), ["-" * w for w in widths], *cells]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def parse_time(text: str) -> datetime:
    """A time as the API gives it (ISO 8601, with its offset)."""
    return datetime.fromisoformat(text)


def client(api: str, token: str) -> httpx.Client:
    """A client of the service's API as the holder of ``token``; ends the command if there is none."""
    if not token:
        raise fail("Cần mã truy cập: --token hoặc LOA_API_TOKEN (tạo bằng loa tokens create TÊN) / "
                   "an API token is needed: --token or LOA_API_TOKEN (made with loa tokens create NAME)", 2)
    return httpx.Client(base_url=api.rstrip("/") + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                        timeout=TIMEOUT_S)


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; its JSON answer, or the command ends with a clear message."""
    where = str(client.base_url).removesuffix("/api/v1/").removesuffix("/api/v1")
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TimeoutException:
        raise fail(f"Dịch vụ tại {where} không trả lời trong {TIMEOUT_S:g} giây / "
                   f"the service at {where} did not answer within {TIMEOUT_S:g} s", 2) from None
    except httpx.HTTPError as exc:
        raise fail(f"Không kết nối được dịch vụ tại {where} — dịch vụ có đang chạy không (loa serve)? "
                   f"Địa chỉ khác: --api hoặc LOA_API_URL / cannot reach the service at {where}: is it running "
                   f"(loa serve)? Another address: --api or LOA_API_URL ({type(exc).__name__}: {exc})", 2) from None
    if response.status_code == 401:
        raise fail(f"Mã truy cập không hợp lệ hoặc đã bị thu hồi (dịch vụ {where}) / the API token is not valid "
                   f"or was revoked (service at {where}): check --token or LOA_API_TOKEN")
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            text = f"{error['message']} / {error['message_en']}"
            for detail in error.get("details", []):
                text += f"\n  {detail['where']}: {detail['problem']}"
        except (ValueError, KeyError, TypeError):
            text = f"HTTP {response.status_code}: {response.text}"
        raise fail(text)
    return response.json() if response.content else None
