"""Real servers that receive what the service sends people: an SMTP server (aiosmtpd) and an
HTTP webhook receiver (the way a Zalo or SMS gateway is reached), each on a free loopback port,
keeping every message."""

from __future__ import annotations

import email
import email.policy
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.ports import free_port


@dataclass(frozen=True)
class Mail:
    to: list[str]
    subject: str
    body: str


@dataclass
class MailInbox:
    port: int
    mails: list[Mail] = field(default_factory=list)

    def url(self, to: str) -> str:
        """The apprise channel that mails ``to`` through this server."""
        return f"mailto://127.0.0.1:{self.port}?from=loa@example.com&to={to}&mode=insecure"

    def to(self, address: str) -> list[Mail]:
        return [m for m in self.mails if address in m.to]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's handler hook
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",))
        body = part.get_content() if part is not None else ""  # type: ignore[union-attr]
        self.mails.append(Mail(list(envelope.rcpt_tos), str(message["Subject"]), body))
        return "250 OK"


@contextmanager
def mail_inbox() -> Iterator[MailInbox]:
    inbox = MailInbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@dataclass
class WebhookInbox:
    port: int
    posts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path, JSON body)
    # Answer this status instead of 200 (a gateway that is down).
    failing: bool = False

    def url(self, path: str) -> str:
        return f"json://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def to(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.posts if p == "/" + path.lstrip("/")]


@contextmanager
def webhook_inbox() -> Iterator[WebhookInbox]:
    inbox = WebhookInbox(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if inbox.failing:
                self.send_response(503)
                self.end_headers()
                return
            inbox.posts.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
            pass

    server = ThreadingHTTPServer(("127.0.0.1", inbox.port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        server.shutdown()
        server.server_close()
