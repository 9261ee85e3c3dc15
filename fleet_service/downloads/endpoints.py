"""The firmware download endpoint, for receivers only (docs/firmware-updates.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from starlette.responses import FileResponse
from starlette.types import Message, Receive, Scope, Send

from fleet_service.db import RowId
from fleet_service.deps import RuntimeDep, SessionDep
from fleet_service.downloads import service

log = logging.getLogger(__name__)

router = APIRouter(tags=["firmware downloads"])
_basic = HTTPBasic(auto_error=False, realm="loa-firmware",
                   description="a receiver's own login (its MQTT user name and password)")


class CountedFileResponse(FileResponse):
    """A file (Range requests answered by Starlette), and afterwards the body bytes that were
    actually sent, to ``on_sent``, whether the client stayed to the end or not."""

    def __init__(self, path: Path, on_sent: Callable[[int], None]) -> None:
        super().__init__(path, media_type="application/octet-stream")
        self._on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            await send(message)
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, counting)
        finally:
            try:
                await anyio.to_thread.run_sync(self._on_sent, sent)
            except Exception:  # the count is lost, the download is not
                log.exception("could not count %d bytes of firmware served", sent)


@router.get("/firmware/download/{release_id}/{path:path}", response_class=FileResponse,
            responses={206: {"description": "the range asked for"}, 416: {"description": "a range beyond the file"}})
def download_firmware(release_id: RowId, path: str, session: SessionDep, runtime: RuntimeDep,
                      credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]) -> FileResponse:
    """Tải firmware / a file of a release (``manifest.json``, ``manifest.sig`` or one of its
    files), for a receiver the release was offered to, signed in with its own login. Answers
    Range requests."""
    receiver_id = service.sign_in(session, credentials.username if credentials else None,
                                  credentials.password if credentials else None)
    service.authorize(session, receiver_id, release_id)
    file = service.cached_file(session, Path(runtime.settings.firmware_cache_dir), release_id, path)
    sessions = runtime.sessions
    return CountedFileResponse(file, lambda sent: service.record_served(sessions, receiver_id, release_id, sent))
