"""Station and region tags from the registry: the region path of codes, and the cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleet_service.db import make_engine, make_sessionmaker, session_scope
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import ReceiverCreate, ReceiverUpdate
from tests.fleet_service.telemetry.conftest import populate_registry as _populate
from tests.fleet_service.telemetry.conftest import running_app
from tests.support.ports import free_port
from tests.support.service import service_settings
from fleet_service.telemetry.tags import TagCache, region_tags
from tests.support.waiting import wait_until


def test_region_tag_is_the_codes_from_the_top():
    regions = {
        1: ("thai-nguyen", "/1/"),
        2: ("thai-nguyen.dai-tu", "/1/2/"),          # repeats its parent's code: only its own part
        3: ("thai-nguyen.dai-tu.an-khanh", "/1/2/3/"),
        4: ("ky-phu", "/1/2/4/"),                     # a code of its own: kept whole
        5: (None, "/1/2/5/"),                         # no code: its id
    }
    assert region_tags(regions) == {
        1: "thai-nguyen", 2: "thai-nguyen/dai-tu", 3: "thai-nguyen/dai-tu/an-khanh",
        4: "thai-nguyen/dai-tu/ky-phu", 5: "thai-nguyen/dai-tu/5",
    }


@pytest.fixture
def registry_world(session_factory):
    return _populate(session_factory)


async def test_cache_loads_learns_new_receivers_and_moves(registry_world):
    sessions, station, station2 = registry_world
    cache = TagCache(sessions, refresh_s=3600, unknown_refresh_s=0.2)
    assert cache.tags_of("rx-1") == ("none", "none")  # before the first load: never blocks
    task = asyncio.create_task(cache.run())
    try:
        await wait_until(lambda: cache.tags_of("rx-1") != ("none", "none"), what="first load")
        assert cache.tags_of("rx-1") == (str(station), "thai-nguyen/dai-tu/an-khanh")
        assert cache.tags_of("rx-spare") == ("none", "none")  # registered, no station

        with session_scope(sessions) as s:
            registry.register_receiver(s, ReceiverCreate(id="rx-new", hardware_id="hw-3", station_id=station2))
        assert cache.tags_of("rx-new") == ("none", "none")  # unknown: asks for a reload
        await wait_until(lambda: cache.tags_of("rx-new") != ("none", "none"), what="the new receiver")
        assert cache.tags_of("rx-new") == (str(station2), "thai-nguyen/dai-tu/hung-son")

        with session_scope(sessions) as s:
            registry.update_receiver(s, "rx-1", ReceiverUpdate(station_id=station2))
        cache.invalidate()  # the registry changed
        await wait_until(lambda: cache.tags_of("rx-1")[0] == str(station2), what="the move")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_database_failure_keeps_the_tags_already_loaded(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    sessions = make_sessionmaker(engine)
    _, station, _ = _populate(sessions)
    cache = TagCache(sessions, refresh_s=0.2, unknown_refresh_s=0.2)
    task = asyncio.create_task(cache.run())
    try:
        await wait_until(lambda: cache.tags_of("rx-1")[0] == str(station), what="first load")
        # The database file goes away: SQLite opens an empty one, without the registry's tables.
        database = Path(sqlite_url.removeprefix("sqlite:///"))
        engine.dispose()
        database.rename(tmp_path / "moved-away.db")
        await wait_until(lambda: cache.last_error is not None, what="a failed refresh")
        assert "no such table" in cache.last_error
        assert cache.tags_of("rx-1")[0] == str(station)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        engine.dispose()


async def test_a_registry_change_from_any_process_retags_telemetry_at_once(sqlite_url, tmp_path: Path):
    """Through the API or straight through the registry's services (as the CLI does): the
    change's outbox entry makes the leading worker reload the tags, with no periodic refresh."""
    # InfluxDB is down (nothing listens): the writer buffers to disk; the tags are what matter.
    settings = service_settings(sqlite_url, influx_url=f"http://127.0.0.1:{free_port()}", influx_token="t",
                                influx_buffer_dir=str(tmp_path / "buffer"))
    async with running_app(settings) as (_app, runtime, client):
        tags = runtime.telemetry.tags
        tags.refresh_s = tags.unknown_refresh_s = 3600  # only the API's change may bring a reload
        _, station, station2 = _populate(runtime.sessions)
        await wait_until(lambda: tags.tags_of("rx-1")[0] == str(station), timeout=5, what="the CLI-style change")
        response = await client.patch("/api/v1/receivers/rx-1", json={"station_id": station2})
        assert response.status_code == 200, response.text
        await wait_until(lambda: tags.tags_of("rx-1")[0] == str(station2), timeout=5, what="the move")
        assert tags.tags_of("rx-1") == (str(station2), "thai-nguyen/dai-tu/hung-son")
