"""The firmware download endpoint, for receivers only (docs/firmware-updates.md)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fleet_service.db import RowId
from fleet_service.downloads import service
from fleet_service.downloads.serving import Downloads, lifespan

log = logging.getLogger(__name__)

router = APIRouter(tags=["firmware downloads"], lifespan=lifespan)
_basic = HTTPBasic(auto_error=False, realm="loa-firmware",
                   description="a receiver's own login (its MQTT user name and password)")


class ReleaseFileResponse(Response):
    """A file of a release, whole or the one range asked for (``Range: bytes=…``), with its
    SHA-256 as a strong ETag so that a resumed download can say which file it holds
    (``If-Range``). Afterwards the body bytes handed to the server go to ``on_sent``, whether
    the client stayed to the end or not."""

    media_type = "application/octet-stream"
    chunk_size = 64 * 1024

    def __init__(self, content: bytes, sha256: str, range_header: str | None, if_range: str | None,
                 on_sent: Callable[[int], None]) -> None:
        etag = f'"{sha256}"'
        headers = {"accept-ranges": "bytes", "etag": etag}
        status, first, end = 200, 0, len(content)
        # A Range for another version of the file (If-Range) is answered with the whole file.
        if range_header is not None and (if_range is None or if_range.strip() == etag):
            asked = byte_range(range_header, len(content))
            if asked == UNSATISFIABLE:
                status, first, end = 416, 0, 0
                headers["content-range"] = f"bytes */{len(content)}"
            elif asked is not None:
                status, (first, end) = 206, asked
                headers["content-range"] = f"bytes {first}-{end - 1}/{len(content)}"
        super().__init__(content if (first, end) == (0, len(content)) else content[first:end], status, headers)
        self._on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body = self.body
            if len(body) <= self.chunk_size:
                await send({"type": "http.response.body", "body": body, "more_body": False})
                sent = len(body)
                return
            for offset in range(0, len(body), self.chunk_size):
                chunk = body[offset:offset + self.chunk_size]
                await send({"type": "http.response.body", "body": chunk,
                            "more_body": offset + self.chunk_size < len(body)})
                sent += len(chunk)
        finally:
            try:
                self._on_sent(sent)
            except Exception:  # the count is lost, the download is not
                log.exception("could not count %d bytes of firmware served", sent)


UNSATISFIABLE = (-1, -1)
# One range of bytes: "bytes=100-199", "bytes=100-", "bytes=-100" (the last 100).
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*", re.ASCII | re.IGNORECASE)


def byte_range(header: str, length: int) -> tuple[int, int] | None:
    """The one range ``header`` asks of a file of ``length`` bytes as (first, end), end
    excluded; ``UNSATISFIABLE`` for one that starts beyond the end; None for a header to ignore
    (malformed, another unit, several ranges), which the whole file answers (RFC 9110 14.2)."""
    found = _RANGE.fullmatch(header)
    if found is None:
        return None
    first_text, last_text = found.groups()
    if not first_text:  # the last N bytes
        if not last_text:
            return None
        suffix = int(last_text)
        return UNSATISFIABLE if suffix == 0 or length == 0 else (max(0, length - suffix), length)
    first = int(first_text)
    if last_text and int(last_text) < first:
        return None
    if first >= length:
        return UNSATISFIABLE
    return first, min(length, int(last_text) + 1) if last_text else length


@router.get("/firmware/download/{release_id}/{path:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
                       206: {"description": "the range asked for"}, 416: {"description": "a range beyond the file"}})
async def download_firmware(release_id: RowId, path: str, request: Request,
                            credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> Response:
    """Tải firmware / a file of a release (``manifest.json``, ``manifest.sig`` or one of its
    files), for a receiver the release was offered to, signed in with its own login. Answers
    Range requests."""
    downloads: Downloads = request.app.state.downloads
    ask = service.ask(credentials.username if credentials else None, credentials.password if credentials else None,
                      release_id)
    await downloads.access.check(ask)
    sha256, content = service.release_file(await downloads.releases.files(release_id), path)
    served, receiver_id = downloads.served, ask.receiver_id
    return ReleaseFileResponse(content, sha256, request.headers.get("range"), request.headers.get("if-range"),
                               lambda sent: served.add(receiver_id, release_id, sent))
