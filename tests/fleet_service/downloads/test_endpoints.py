"""The firmware download endpoint through the real API's route, on SQLite and PostgreSQL: a receiver
offered a release fetches it with its own login, whole or by ranges (a cut download resumes),
and the bytes sent are counted; anyone else, a revoked login, a receiver not offered the
release and a withdrawn release are refused, at once, in every API process, although each
process keeps the release's files and decides many requests together."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.app import create_app
from fleet_service.config import Settings
from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.downloads import serving
from fleet_service.downloads.answers import UNSATISFIABLE, byte_range
from fleet_service.downloads.models import FirmwareDownload
from fleet_service.downloads.service import Ask, ask
from fleet_service.errors import NotAuthenticated
from fleet_service.firmware import service as releases
from fleet_service.firmware.models import FirmwareReleaseFile
from fleet_service.registry import service as registry
from fleet_service.rollouts.models import RolloutTarget, TargetState
from fleet_service.runtime import Runtime
from tests.fleet_service.downloads.conftest import CONTENT, ETAG, MANIFEST, SIGNATURE, Api, Setup, admin_token, stored_counts


def test_an_offered_receiver_fetches_the_release_whole_and_by_ranges(api: Api) -> None:
    whole = api.get("rx-0")
    assert whole.status_code == 200 and whole.content == CONTENT
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == ETAG
    assert whole.headers["content-type"] == "application/octet-stream"
    assert api.get("rx-0", "manifest.json").content == MANIFEST
    assert api.get("rx-0", "manifest.sig").content == SIGNATURE

    part = api.get("rx-0", range="bytes=1000-1999")
    assert part.status_code == 206 and part.content == CONTENT[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(CONTENT)}"
    assert part.headers["content-length"] == "1000"
    # A download cut at 30,000 bytes resumes from there.
    rest = api.get("rx-0", range="bytes=30000-", **{"if-range": ETAG})
    assert rest.status_code == 206 and CONTENT[:30000] + rest.content == CONTENT
    beyond = api.get("rx-0", range=f"bytes={len(CONTENT)}-")
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(CONTENT)}"

    sent = len(CONTENT) + len(MANIFEST) + len(SIGNATURE) + 1000 + (len(CONTENT) - 30000)
    assert api.served() == {"rx-0": (sent, 6)}
    assert api.get("rx-0", "loa/nothing.mpy").status_code == 404
    assert api.get("rx-0", "../../etc/passwd").status_code == 404
    assert api.served() == {"rx-0": (sent, 6)}  # nothing sent, nothing counted


def test_a_range_for_another_file_or_one_not_understood_gets_the_whole_file(api: Api) -> None:
    # The receiver holds the start of another build of this path: it must start again.
    other = api.get("rx-0", range="bytes=30000-", **{"if-range": '"' + "0" * 64 + '"'})
    assert other.status_code == 200 and other.content == CONTENT
    several = api.get("rx-0", range="bytes=0-9,20-29")
    assert several.status_code == 200 and several.content == CONTENT
    assert api.get("rx-0", range="lines=1-2").content == CONTENT
    last = api.get("rx-0", range="bytes=-100")
    assert last.status_code == 206 and last.content == CONTENT[-100:]
    assert api.served() == {"rx-0": (3 * len(CONTENT) + 100, 4)}


@pytest.mark.parametrize(("header", "length", "expected"), [
    ("bytes=0-99", 1000, (0, 100)),
    ("bytes=100-", 1000, (100, 1000)),
    ("bytes=990-2000", 1000, (990, 1000)),  # the end beyond the file: up to its end
    ("bytes=999-999", 1000, (999, 1000)),
    ("bytes=-10", 1000, (990, 1000)),
    ("bytes=-5000", 1000, (0, 1000)),
    (" Bytes = 5 - 9 ", 1000, (5, 10)),
    ("bytes=1000-", 1000, UNSATISFIABLE),
    ("bytes=-0", 1000, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=9-5", 1000, None),
    ("bytes=0-1,5-6", 1000, None),
    ("bytes=-", 1000, None),
    ("bytes=a-b", 1000, None),
    ("bytes=٣-", 1000, None),  # a digit, but not an ASCII one
    ("bytes=" + "9" * 5000 + "-", 1000, None),
    ("items=0-1", 1000, None),
])
def test_byte_ranges_are_read_as_rfc_9110_says(header: str, length: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, length) == expected


def test_only_a_receiver_offered_the_release_with_its_own_live_login_gets_it(setup: Setup, api: Api) -> None:
    refused = api.get(None)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")
    assert api.get("rx-0", password="not-its-password").status_code == 401
    assert api.get("rx-1", password=setup.fleet.credentials["rx-0"]).status_code == 401  # another's password
    assert api.client.get(api.url(), auth=("x" * 65, "p")).status_code == 401
    token = admin_token(api)
    assert api.client.get(api.url(), headers={"Authorization": f"Bearer {token}"}).status_code == 401

    pending = api.get("rx-1")  # in the rollout, its wave not reached yet
    assert pending.status_code == 403 and pending.json()["error"]["code"] == "not_offered"
    assert api.get("rx-2").status_code == 403  # not in the rollout
    assert api.client.get(f"/api/v1/firmware/download/{setup.release_id + 1}/manifest.json",
                          auth=("rx-0", setup.fleet.credentials["rx-0"])).status_code == 404

    with session_scope(api.runtime.sessions) as session:
        registry.revoke(session, "rx-0")
    assert api.get("rx-0").status_code == 401  # at once
    assert api.served() == {}


def test_a_revoked_login_is_refused_at_once_by_every_api_process(setup: Setup) -> None:
    first, second = setup.api(), setup.api()
    for process in (first, second):  # each has decided for this login and keeps the files
        assert process.get("rx-0", range="bytes=0-99").status_code == 206
    token = admin_token(first)
    revoked = second.client.post("/api/v1/receivers/rx-0/revoke", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code < 300, revoked.text
    for process in (first, second):
        assert process.get("rx-0", range="bytes=100-").status_code == 401
    # A new password: the old one stays refused, the new one works at once, in both.
    with session_scope(first.runtime.sessions) as session:
        password = registry.provision(session, "rx-0").mqtt_password
    for process in (first, second):
        assert process.get("rx-0", range="bytes=100-").status_code == 401
        assert process.get("rx-0", password=password, range="bytes=100-").status_code == 206


def test_a_withdrawn_release_is_no_longer_served(setup: Setup) -> None:
    first, second = setup.api(), setup.api()
    for process in (first, second):
        assert process.get("rx-0", range="bytes=0-99").status_code == 206
    with session_scope(first.runtime.sessions) as session:
        releases.withdraw(session, setup.release_id, "lỗi âm thanh", releases.Actor(None, "kythuat"))
    for process in (first, second):
        gone = process.get("rx-0", range="bytes=100-")
        assert gone.status_code == 410 and gone.json()["error"]["message"] != gone.json()["error"]["message_en"]
        assert process.get("rx-0", "manifest.json").status_code == 410


def test_a_cancelled_offer_is_refused_at_once(setup: Setup, api: Api) -> None:
    assert api.get("rx-0", range="bytes=0-99").status_code == 206
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == setup.rollout_id,
                                                    RolloutTarget.receiver_id == "rx-0")
                        .values(state=TargetState.CANCELLED.value))
    assert api.get("rx-0", range="bytes=100-").status_code == 403


def test_a_file_damaged_in_the_database_is_never_served(setup: Setup, api: Api) -> None:
    with session_scope(api.runtime.sessions) as session:
        session.execute(update(FirmwareReleaseFile).values(content=bytes([CONTENT[0] ^ 0xFF]) + CONTENT[1:]))
    with pytest.raises(RuntimeError, match="SHA-256"):
        api.get("rx-0")
    assert api.served() == {}


def test_a_lost_database_connection_answers_503_once_and_is_replaced(setup: Setup, api: Api) -> None:
    if not setup.db_url.startswith("postgresql"):
        pytest.skip("a connection of SQLite cannot be cut from outside")
    assert api.get("rx-0", range="bytes=0-99").status_code == 206
    with _sessions(setup.db_url) as sessions, session_scope(sessions) as session:
        session.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    cut = api.get("rx-0", range="bytes=0-99")
    assert cut.status_code == 503 and cut.json()["error"]["code"] == "unavailable"
    assert api.get("rx-0", range="bytes=0-99").status_code == 206


def _asks(setup: Setup) -> list[Ask]:
    """Allowed, a wrong password, not offered, another release: each twice."""
    good = ask("rx-0", setup.fleet.credentials["rx-0"], setup.release_id)
    return [good, ask("rx-0", "wrong", setup.release_id), ask("rx-1", setup.fleet.credentials["rx-1"], setup.release_id),
            ask("rx-0", setup.fleet.credentials["rx-0"], setup.release_id + 1)] * 2


def test_requests_that_come_together_are_decided_in_one_batch(setup: Setup, api: Api) -> None:
    checks = serving.AccessChecks(api.runtime.engine, in_loop=False)

    async def all_at_once() -> list[str | None]:
        async def one(a: Ask) -> str | None:
            try:
                await checks.check(a)
                return None
            except Exception as exc:  # noqa: BLE001 - the outcome is what is compared
                return getattr(exc, "code", repr(exc))

        return await asyncio.gather(*(one(a) for a in _asks(setup) * 5))

    try:
        outcomes = asyncio.run(all_at_once())
    finally:
        checks.close()
    assert outcomes == [None, "not_authenticated", "not_offered", "not_found"] * 10
    assert checks.asked == 40 and checks.batches < 10  # not one each


def test_a_request_is_decided_by_queries_that_start_after_it_came(setup: Setup, api: Api) -> None:
    """A request that arrives while an earlier one's queries run is not answered from them:
    a revocation committed in between refuses it."""
    queried, go_on = threading.Event(), threading.Event()

    class Paused(serving.AccessChecks):
        def _decide(self, asks: list[Ask]) -> list:  # type: ignore[type-arg]
            outcomes = super()._decide(asks)
            if self.batches == 1:
                queried.set()
                go_on.wait(30)
            return outcomes

    checks = Paused(api.runtime.engine, in_loop=False)
    good = ask("rx-0", setup.fleet.credentials["rx-0"], setup.release_id)

    async def run() -> None:
        earlier = asyncio.create_task(checks.check(good))
        await asyncio.to_thread(queried.wait, 30)
        with session_scope(api.runtime.sessions) as session:
            registry.revoke(session, "rx-0")
        later = asyncio.create_task(checks.check(good))
        await asyncio.sleep(0)
        go_on.set()
        await earlier  # decided before the revocation
        with pytest.raises(NotAuthenticated):
            await later

    try:
        asyncio.run(run())
    finally:
        checks.close()
    assert checks.batches == 2


def test_bytes_are_counted_exactly_under_concurrent_requests_in_two_processes(setup: Setup) -> None:
    processes = [setup.api(), setup.api()]
    with session_scope(processes[0].runtime.sessions) as session:
        session.execute(update(RolloutTarget).where(RolloutTarget.rollout_id == setup.rollout_id,
                                                    RolloutTarget.receiver_id == "rx-1")
                        .values(state=TargetState.DOWNLOADING.value))
    ranges = [None, "bytes=0-999", "bytes=1000-", "bytes=-7"]
    lengths = {None: len(CONTENT), "bytes=0-999": 1000, "bytes=1000-": len(CONTENT) - 1000, "bytes=-7": 7}
    rounds = 15

    def fetch(worker: int) -> None:
        process, rid = processes[worker % 2], ("rx-0", "rx-1")[worker // 2 % 2]
        for n in range(rounds):
            value = ranges[(worker + n) % len(ranges)]
            response = process.get(rid, **({"range": value} if value else {}))
            assert response.status_code in (200, 206) and len(response.content) == lengths[value]

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(fetch, range(8)))
    expected: dict[str, list[int]] = {"rx-0": [0, 0], "rx-1": [0, 0]}
    for worker in range(8):
        for n in range(rounds):
            count = expected[("rx-0", "rx-1")[worker // 2 % 2]]
            count[0] += lengths[ranges[(worker + n) % len(ranges)]]
            count[1] += 1
    processes[0].downloads.served.flush(processes[0].runtime.sessions)
    assert processes[1].served() == {rid: tuple(c) for rid, c in expected.items()}
    # Each request checked once: in a batch of the thread, or at once in the event loop (SQLite).
    asked = sum(p.downloads.access.asked for p in processes)
    assert asked + sum(p.downloads.access.decided_here for p in processes) == 8 * rounds
    assert sum(p.downloads.access.batches for p in processes) <= asked


@contextmanager
def _sessions(url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def test_counts_reach_the_database_within_the_flush_interval(api: Api) -> None:
    assert api.get("rx-0", range="bytes=0-99").status_code == 206
    deadline = time.monotonic() + serving.FLUSH_INTERVAL_S + 5  # the interval, and a busy machine
    while not stored_counts(api.runtime) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_counts(api.runtime) == {"rx-0": (100, 1)}


def test_counts_are_written_at_a_clean_stop(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "FLUSH_INTERVAL_S", 3600.0)  # only the stop can write them
    runtime = Runtime.from_settings(Settings(database_url=setup.db_url, environment="test"))
    try:
        with TestClient(create_app(runtime=runtime, mqtt=False)) as client:
            process = Api(client, runtime, setup.fleet, setup.release_id)
            for _ in range(3):
                assert process.get("rx-0", range="bytes=0-99").status_code == 206
            assert stored_counts(runtime) == {}
        assert stored_counts(runtime) == {"rx-0": (300, 3)}
    finally:
        runtime.close()


def test_counts_are_kept_while_the_database_refuses_them(setup: Setup, api: Api, tmp_path) -> None:
    counter = serving.ServedCounter()
    counter.add("rx-0", setup.release_id, 100)
    counter.add("rx-0", setup.release_id, 50)
    with _sessions(f"sqlite:///{tmp_path / 'missing' / 'loa.db'}") as unreachable, pytest.raises(Exception):
        counter.flush(unreachable)
    assert counter.pending() == 1
    counter.add("rx-0", setup.release_id, 7)
    counter.add("rx-1", setup.release_id, 1)
    assert counter.flush(api.runtime.sessions) == 2
    counter.add("rx-0", setup.release_id, 3)  # added to the row already there
    assert counter.flush(api.runtime.sessions) == 1 and counter.pending() == 0
    assert stored_counts(api.runtime) == {"rx-0": (160, 4), "rx-1": (1, 1)}
    with session_scope(api.runtime.sessions) as session:
        row = session.get(FirmwareDownload, ("rx-0", setup.release_id))
        assert row is not None and row.first_at <= row.last_at
