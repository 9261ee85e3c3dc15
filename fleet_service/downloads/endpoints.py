"""The firmware download endpoint on the API's port, for receivers only
(docs/firmware-updates.md). The download listener (listener.py) answers the same path on a
port of its own, faster; both take their decisions from serving.Downloads.fetch and
answers.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPBasic
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from fleet_service.db import RowId
from fleet_service.downloads.answers import FILE_TYPE, FilePart, basic_login, file_part
from fleet_service.downloads.serving import Downloads, lifespan

log = logging.getLogger(__name__)

router = APIRouter(tags=["firmware downloads"], lifespan=lifespan)


class ReceiverLogin(HTTPBasic):
    """HTTP Basic in the API's description; the login read by answers.basic_login, as the
    download listener reads it: (None, None) for none or one that cannot be read."""

    async def __call__(self, request: Request) -> tuple[str | None, str | None]:  # type: ignore[override]
        return basic_login(request.headers.get("authorization"))


_login = ReceiverLogin(realm="loa-firmware", description="a receiver's own login (its MQTT user name and password)")


class ReleaseFileResponse(Response):
    """A file of a release, whole or the one range asked for, as answers.file_part decides.
    Afterwards the body bytes handed to the server go to ``on_sent``, whether the client stayed
    to the end or not."""

    media_type = FILE_TYPE
    chunk_size = 64 * 1024

    def __init__(self, content: bytes, part: FilePart, on_sent: Callable[[int], None]) -> None:
        body = content if (part.first, part.end) == (0, len(content)) else content[part.first:part.end]
        super().__init__(body, part.status, dict(part.headers))
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


@router.get("/firmware/download/{release_id}/{path:path}", response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}, "description": "the whole file"},
                       206: {"description": "the range asked for"}, 416: {"description": "a range beyond the file"}})
async def download_firmware(release_id: RowId, path: str, request: Request,
                            login: Annotated[tuple[str | None, str | None], Depends(_login)]) -> Response:
    """Tải firmware / a file of a release (``manifest.json``, ``manifest.sig`` or one of its
    files), for a receiver the release was offered to, signed in with its own login. Answers
    Range requests."""
    downloads: Downloads = request.app.state.downloads
    fetched = await downloads.fetch(*login, release_id, path)
    part = file_part(fetched.sha256, len(fetched.content), request.headers.get("range"),
                     request.headers.get("if-range"))
    served, receiver_id = downloads.served, fetched.receiver_id
    return ReleaseFileResponse(fetched.content, part, lambda sent: served.add(receiver_id, release_id, sent))
