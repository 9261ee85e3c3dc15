"""A small HTTP server for a firmware release's files, as the service's download endpoint
serves them (fleet_service/downloads): HTTP Basic with a receiver's login, whole files or
``Range: bytes=N-``. It can cut its answers after a number of body bytes (``cut_every``), as a
4G link drops a connection mid-transfer, and counts what it sent.

    with ReleaseServer(bundle_dir, {"rx-1": "pw"}) as server:
        url = server.url  # http://127.0.0.1:<port>/release
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "/release/"


@dataclass
class Served:
    path: str
    start: int
    sent: int
    status: int


@dataclass
class ReleaseServer:
    root: Path
    logins: dict[str, str]
    cut_every: int = 0                 # close each answer after this many body bytes (0: never)
    requests: list[Served] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/release"

    def sent(self) -> int:
        return sum(r.sent for r in self.requests)

    def __enter__(self) -> ReleaseServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                auth = self.headers.get("Authorization", "")
                login = None
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    login = user if owner.logins.get(user) == password else None
                if login is None:
                    self._answer(401, b"", {"WWW-Authenticate": 'Basic realm="loa"'})
                    return
                name = self.path[len(PREFIX):] if self.path.startswith(PREFIX) else ""
                target = (owner.root / name).resolve()
                if not name or owner.root.resolve() not in target.parents or not target.is_file():
                    self._answer(404, b"")
                    return
                data = target.read_bytes()
                start = 0
                ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged[1])
                    if start >= len(data):
                        self._answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        return
                body = data[start:]
                headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
                if ranged:
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                status = 206 if ranged else 200
                cut = owner.cut_every
                sent = body if not cut else body[:cut]
                self._answer(status, sent, headers, length=len(body))
                owner.requests.append(Served(name, start, len(sent), status))
                if len(sent) < len(body):
                    self.close_connection = True

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                        length: int | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
