"""The download listener, over real sockets on SQLite and PostgreSQL: it answers the download
path as the API's route does (the same checks at every request, statuses, headers, bodies and
counts), keeps connections alive, answers pipelined requests in order, and bounds what a
malformed, oversized, slow or vanishing client can cost it."""

from __future__ import annotations

import base64
import http.client
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest
from sqlalchemy import text, update

from fleet_service.config import Settings
from fleet_service.db import session_scope
from fleet_service.downloads import listener as listener_module
from fleet_service.firmware import service as releases
from fleet_service.registry import service as registry
from fleet_service.rollouts.driver import firmware_base_url
from fleet_service.rollouts.models import RolloutTarget, TargetState
from tests.fleet_service.downloads.conftest import CONTENT, ETAG, MANIFEST, SIGNATURE, Api, Setup

# Headers that differ between two servers answering the same request.
SERVER_HEADERS = {"date", "server", "connection"}


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def basic(api: Api, rid: str, password: str | None = None) -> str:
    login = f"{rid}:{password or api.fleet.credentials[rid]}"
    return "Basic " + base64.b64encode(login.encode()).decode()


@contextmanager
def connect(api: Api) -> Iterator[http.client.HTTPConnection]:
    """One kept-alive connection to the listener."""
    connection = http.client.HTTPConnection("127.0.0.1", api.listener.port, timeout=10)
    try:
        yield connection
    finally:
        connection.close()


def fetch(connection: http.client.HTTPConnection, path: str, method: str = "GET", **headers: str) -> Response:
    connection.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
    answer = connection.getresponse()
    return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())


def raw(api: Api, data: bytes, answers: int = 1, timeout: float = 10) -> tuple[list[Response], bool]:
    """Sends ``data`` as it is and reads ``answers`` answers; also whether the listener then
    closed the connection."""
    with closing(socket.create_connection(("127.0.0.1", api.listener.port), timeout=timeout)) as sock:
        sock.sendall(data)
        reader = sock.makefile("rb")
        got = [_read_answer(reader) for _ in range(answers)]
        try:
            closed = reader.read(1) == b""
        except TimeoutError:
            closed = False
        return got, closed


def _read_answer(reader) -> Response:  # type: ignore[no-untyped-def]
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline().decode("latin-1").rstrip("\r\n")):
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return Response(status, headers, reader.read(int(headers.get("content-length", 0))))


def test_a_receiver_fetches_the_release_on_one_kept_alive_connection(api: Api) -> None:
    url, login = api.url(), basic(api, "rx-0")
    with connect(api) as connection:
        whole = fetch(connection, url, authorization=login)
        assert whole.status == 200 and whole.body == CONTENT
        assert whole.headers["content-type"] == "application/octet-stream"
        assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == ETAG
        assert "connection" not in whole.headers and whole.headers["date"].endswith("GMT")
        assert fetch(connection, api.url("manifest.json"), authorization=login).body == MANIFEST
        assert fetch(connection, api.url("manifest.sig"), authorization=login).body == SIGNATURE
        part = fetch(connection, url, authorization=login, range="bytes=1000-1999")
        assert part.status == 206 and part.body == CONTENT[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(CONTENT)}"
        rest = fetch(connection, url, authorization=login, range="bytes=30000-", if_range=ETAG)
        assert rest.status == 206 and CONTENT[:30000] + rest.body == CONTENT
        other = fetch(connection, url, authorization=login, range="bytes=30000-", if_range='"' + "0" * 64 + '"')
        assert other.status == 200 and other.body == CONTENT
        last = fetch(connection, url, authorization=login, range="bytes=-100")
        assert last.status == 206 and last.body == CONTENT[-100:]
        beyond = fetch(connection, url, authorization=login, range=f"bytes={len(CONTENT)}-")
        assert beyond.status == 416 and beyond.headers["content-range"] == f"bytes */{len(CONTENT)}"
        assert beyond.body == b""
        head = fetch(connection, url, "HEAD", authorization=login)
        assert head.status == 200 and head.body == b"" and head.headers["content-length"] == str(len(CONTENT))
        assert head.headers["etag"] == ETAG
        missing = fetch(connection, api.url("loa/nothing.mpy"), authorization=login)
        assert missing.status == 404 and b"nothing.mpy" in missing.body
        assert fetch(connection, url, authorization=login, range="bytes=0-9").body == CONTENT[:10]  # still open
    sent = (2 * len(CONTENT) + len(MANIFEST) + len(SIGNATURE) + 1000 + (len(CONTENT) - 30000) + 100 + 10)
    assert api.served() == {"rx-0": (sent, 10)}  # HEAD and 416 count as requests of no bytes


REQUESTS = [
    ("rx-0", None, "loa/app.mpy", {}),
    ("rx-0", None, "loa/app.mpy", {"range": "bytes=5-9"}),
    ("rx-0", None, "loa/app.mpy", {"range": "bytes=-7", "if-range": ETAG}),
    ("rx-0", None, "loa/app.mpy", {"range": "bytes=0-9,20-29"}),
    ("rx-0", None, "loa/app.mpy", {"range": "bytes=999999-"}),
    ("rx-0", None, "manifest.json", {}),
    ("rx-0", None, "loa%2Fapp.mpy", {}),
    ("rx-0", None, "loa/nothing.mpy", {}),
    ("rx-0", None, "..%2F..%2Fetc%2Fpasswd", {}),
    ("rx-0", "wrong", "loa/app.mpy", {}),
    ("rx-1", None, "loa/app.mpy", {}),
    ("rx-2", None, "manifest.json", {}),
    (None, None, "loa/app.mpy", {}),
    (None, None, "loa/app.mpy", {"authorization": "Bearer abc"}),
    (None, None, "loa/app.mpy", {"authorization": "Basic !!!"}),
    ("x" * 65, "p", "loa/app.mpy", {}),
]


def test_the_listener_answers_as_the_api_route_does(api: Api) -> None:
    with connect(api) as connection:
        for rid, password, path, headers in REQUESTS:
            if rid is not None:
                headers = {**headers, "authorization": basic(api, rid, password)}
            route = api.client.get(api.url(path), headers=headers)
            ours = fetch(connection, api.url(path), **headers)
            assert (ours.status, ours.body) == (route.status_code, route.content), (rid, path, headers)
            expected = {k: v for k, v in route.headers.items() if k not in SERVER_HEADERS}
            assert {k: v for k, v in ours.headers.items() if k not in SERVER_HEADERS} == expected
        # No such release: the same status and error.
        route = api.client.get(f"/api/v1/firmware/download/{api.release_id + 1}/manifest.json",
                               headers={"authorization": basic(api, "rx-0")})
        ours = fetch(connection, f"/api/v1/firmware/download/{api.release_id + 1}/manifest.json",
                     authorization=basic(api, "rx-0"))
        assert (ours.status, ours.body) == (route.status_code, route.content) == (404, ours.body)
        refused = fetch(connection, api.url(), authorization=basic(api, "rx-0", "wrong"))
        assert refused.headers["www-authenticate"] == 'Basic realm="loa-firmware"'


def test_a_revoked_login_a_withdrawn_release_and_a_cancelled_offer_are_refused_at_once(setup: Setup) -> None:
    first, second = setup.api(), setup.api()
    connections = [http.client.HTTPConnection("127.0.0.1", p.listener.port, timeout=10) for p in (first, second)]
    try:
        def status(n: int, rid: str = "rx-0", password: str | None = None) -> int:
            return fetch(connections[n], first.url(), authorization=basic(first, rid, password),
                         range="bytes=0-99").status

        assert [status(0), status(1)] == [206, 206]
        with session_scope(first.runtime.sessions) as session:
            password = registry.provision(session, "rx-0").mqtt_password  # the old one is revoked
        assert [status(0), status(1)] == [401, 401]
        assert [status(0, password=password), status(1, password=password)] == [206, 206]

        with session_scope(first.runtime.sessions) as session:
            session.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == setup.rollout_id,
                                                        RolloutTarget.receiver_id == "rx-0")
                            .values(state=TargetState.CANCELLED.value))
        assert [status(0, password=password), status(1, password=password)] == [403, 403]
        with session_scope(first.runtime.sessions) as session:
            session.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == setup.rollout_id,
                                                        RolloutTarget.receiver_id == "rx-0")
                            .values(state=TargetState.DOWNLOADING.value))
            releases.withdraw(session, setup.release_id, "lỗi âm thanh", releases.Actor(None, "kythuat"))
        gone = fetch(connections[1], first.url(), authorization=basic(first, "rx-0", password))
        assert gone.status == 410 and b'"code":"withdrawn"' in gone.body
        assert status(0, password=password) == 410
        with session_scope(first.runtime.sessions) as session:
            registry.revoke(session, "rx-0")
        assert [status(0, password=password), status(1, password=password)] == [401, 401]
    finally:
        for connection in connections:
            connection.close()


def test_a_database_that_fails_a_request_answers_503_and_the_next_one_is_decided_again(
        setup: Setup, api: Api) -> None:
    """SQLite: a table gone for a moment fails the event loop's own read, then the thread's.
    PostgreSQL: the thread's connection is cut."""
    login = basic(api, "rx-0")
    with connect(api) as connection:
        assert fetch(connection, api.url(), authorization=login, range="bytes=0-9").status == 206
        with session_scope(api.runtime.sessions) as session:
            if setup.db_url.startswith("sqlite"):
                session.execute(text("ALTER TABLE rollout_targets RENAME TO rollout_targets_away"))
            else:
                session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        try:
            failed = fetch(connection, api.url(), authorization=login, range="bytes=0-9")
        finally:
            if setup.db_url.startswith("sqlite"):
                with session_scope(api.runtime.sessions) as session:
                    session.execute(text("ALTER TABLE rollout_targets_away RENAME TO rollout_targets"))
        assert failed.status == 503 and failed.headers["retry-after"] == "30"
        assert b'"code":"unavailable"' in failed.body
        assert fetch(connection, api.url(), authorization=login, range="bytes=0-9").status == 206
    checked = api.downloads.access
    assert checked.decided_here + checked.asked == 2  # the failed one is neither


def test_pipelined_requests_are_answered_in_order(api: Api) -> None:
    login = basic(api, "rx-0")
    requests = b"".join(f"GET {api.url()} HTTP/1.1\r\nHost: x\r\nAuthorization: {login}\r\nRange: bytes={n}-{n}\r\n\r\n"
                        .encode() for n in range(5))
    answers, closed = raw(api, requests, 5, timeout=1)
    assert [a.body for a in answers] == [CONTENT[n:n + 1] for n in range(5)] and not closed
    # Behind an answer that takes a while (a large file), more than the listener reads ahead:
    # it answers those and closes, the last saying so.
    whole = f"GET {api.url()} HTTP/1.1\r\nAuthorization: {login}\r\n\r\n"
    small = f"GET {api.url()} HTTP/1.1\r\nAuthorization: {login}\r\nRange: bytes=0-0\r\n\r\n"
    answers, closed = raw(api, (whole + small * (listener_module.MAX_PIPELINED + 3)).encode(),
                          listener_module.MAX_PIPELINED)
    assert answers[0].body == CONTENT and all(a.status == 206 for a in answers[1:]) and closed
    assert answers[-1].headers["connection"] == "close" and "connection" not in answers[0].headers
    small_ones = listener_module.MAX_PIPELINED - 1
    assert api.served() == {"rx-0": (5 + len(CONTENT) + small_ones, 6 + small_ones)}


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET /api/v1/firmware/download/1/x HTTP/9.9\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
    (b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 100 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"a" * 100_000, 413),
])
def test_a_request_that_cannot_be_read_is_refused_and_the_connection_closed(
        api: Api, request_bytes: bytes, status: int) -> None:
    answers, closed = raw(api, request_bytes)
    assert answers[0].status == status and closed
    assert answers[0].headers["connection"] == "close" and answers[0].body.startswith(b'{"error":{"code":')


def test_a_header_that_never_ends_is_refused_once_too_large(api: Api) -> None:
    """Sent a little at a time, as it is read: the bound holds across reads, where httptools
    gathers an unfinished header before it hands it over."""
    with closing(socket.create_connection(("127.0.0.1", api.listener.port), timeout=10)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
        refused = b""
        for _ in range(40):
            try:
                sock.sendall(b"a" * 1000)
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.01)  # one read each
            sock.setblocking(False)
            try:
                refused += sock.recv(4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if refused:
                break
        assert refused.startswith(b"HTTP/1.1 431 ")


def test_a_client_that_takes_nothing_of_an_answer_is_cut(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "SEND_TIMEOUT_S", 1.0)
    with closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", api.listener.port))
        deadline = time.monotonic() + 10
        while not api.listener.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        # The kernel's buffers on the listener's side kept small too, so that the answer waits
        # for the client rather than fitting in them.
        served, = api.listener.connections
        served._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # type: ignore[union-attr]
        sock.sendall(f"GET {api.url()} HTTP/1.1\r\nAuthorization: {basic(api, 'rx-0')}\r\n\r\n".encode())
        while api.listener.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not api.listener.connections  # after a second or two of nothing taken
    assert api.served()["rx-0"][1] == 1  # what was handed over is counted


def test_other_paths_and_methods_are_refused_as_the_api_refuses_them(api: Api) -> None:
    login = basic(api, "rx-0")
    with connect(api) as connection:
        unknown = fetch(connection, "/api/v1/receivers", authorization=login)
        assert unknown.status == 404 and b"/api/v1/receivers" in unknown.body
        assert fetch(connection, f"/api/v1/firmware/download/{api.release_id}", authorization=login).status == 404
        assert fetch(connection, "/api/v1/firmware/download/abc/manifest.json", authorization=login).status == 422
        assert fetch(connection, "/api/v1/firmware/download/0/manifest.json", authorization=login).status == 422
        posted = fetch(connection, api.url(), "POST", authorization=login)
        assert posted.status == 405 and posted.headers["allow"] == "GET, HEAD"
        query = fetch(connection, api.url() + "?v=1", authorization=login, range="bytes=0-1")
        assert query.status == 206 and query.body == CONTENT[:2]  # the query is ignored, as by the route
    # HTTP/1.0 closes after its answer unless it asks to keep the connection.
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.0\r\nAuthorization: {login}\r\nRange: bytes=0-0\r\n\r\n".encode())
    assert answers[0].status == 206 and closed
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.0\r\nConnection: keep-alive\r\nAuthorization: {login}\r\n"
                               f"Range: bytes=0-0\r\n\r\n".encode(), timeout=1)
    assert answers[0].headers["connection"] == "keep-alive" and not closed
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.1\r\nConnection: close\r\nAuthorization: {login}\r\n\r\n"
                          .encode())
    assert answers[0].body == CONTENT and closed
    # A request to switch protocols is answered as any other, and nothing after it is read.
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                               f"Authorization: {login}\r\nRange: bytes=0-0\r\n\r\nPRI * HTTP/2.0\r\n\r\n".encode())
    assert answers[0].status == 206 and closed


def test_a_client_that_goes_away_mid_file_is_counted_what_was_handed_over(api: Api) -> None:
    login = basic(api, "rx-0")
    with closing(socket.socket()) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", api.listener.port))
        sock.sendall(f"GET {api.url()} HTTP/1.1\r\nAuthorization: {login}\r\n\r\n".encode())
        received = len(sock.recv(1000))
        assert received > 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    deadline = time.monotonic() + 10
    while api.downloads.served.pending() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    (sent, requests), = api.served().values()
    assert requests == 1 and 0 < sent <= len(CONTENT)
    with connect(api) as connection:  # the listener goes on
        assert fetch(connection, api.url(), authorization=login).body == CONTENT


def test_idle_and_slow_connections_are_closed(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(listener_module, "REQUEST_TIMEOUT_S", 1.0)
    login = basic(api, "rx-0")
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.1\r\nAuthorization: {login}\r\nRange: bytes=0-0\r\n\r\n"
                          .encode(), timeout=5)
    assert answers[0].status == 206 and closed  # after a second or two of nothing
    answers, closed = raw(api, f"GET {api.url()} HTTP/1.1\r\nAuthorization: {login}\r\n".encode(), timeout=5)
    assert answers[0].status == 408 and closed
    with closing(socket.create_connection(("127.0.0.1", api.listener.port), timeout=5)) as sock:
        assert sock.recv(1) == b""  # a connection that never sends anything


def test_connections_beyond_the_limit_are_closed_at_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "MAX_CONNECTIONS", 2)
    api = setup.api()
    with connect(api) as first, connect(api) as second:
        for connection in (first, second):
            assert fetch(connection, api.url(), authorization=basic(api, "rx-0"), range="bytes=0-0").status == 206
        with closing(socket.create_connection(("127.0.0.1", api.listener.port), timeout=5)) as third:
            assert third.recv(1) == b""
    deadline = time.monotonic() + 5
    while api.listener.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    with connect(api) as again:  # room again once the others closed
        assert fetch(again, api.url(), authorization=basic(api, "rx-0"), range="bytes=0-0").status == 206


def test_the_listener_stops_with_the_api_and_its_counts_are_written(setup: Setup) -> None:
    api = setup.api()
    port = api.listener.port
    with connect(api) as connection:
        assert fetch(connection, api.url(), authorization=basic(api, "rx-0"), range="bytes=0-9").status == 206
    api.client.__exit__(None, None, None)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    from tests.fleet_service.downloads.conftest import stored_counts
    assert stored_counts(api.runtime) == {"rx-0": (10, 1)}


def test_rollouts_offer_the_listener_when_it_runs() -> None:
    assert firmware_base_url(Settings(environment="test", api_port=8000, download_port=8001)) == \
        "http://127.0.0.1:8001"
    assert firmware_base_url(Settings(environment="test", api_host="0.0.0.0", download_port=8001,
                                      download_host="10.0.0.5")) == "http://10.0.0.5:8001"
    assert firmware_base_url(Settings(environment="test", api_port=8000, download_port=0)) == "http://127.0.0.1:8000"
    assert firmware_base_url(Settings(environment="test", download_port=8001,
                                      firmware_base_url="https://loa.example/")) == "https://loa.example"
