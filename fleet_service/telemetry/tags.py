"""Station and region tags for each receiver, from the registry, cached.

Lookups are a dictionary read (the writer thread does them for every point); the cache is
rebuilt in the background, so a slow or absent database never holds telemetry up: until the
first load, and for receivers the cache does not know yet, the tags are ``none``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping

from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import session_scope
from fleet_service.telemetry.points import NONE_TAG
from fleet_service.telemetry.repository import TagRepository

log = logging.getLogger(__name__)

# A full reload at least this often picks up receivers moved between stations and regions
# renamed or moved (the registry has no change feed).
REFRESH_S = 60.0
# A receiver the cache does not know (just registered) triggers a reload, at most this often:
# a burst of new receivers costs one query, not one each.
UNKNOWN_REFRESH_S = 5.0
# How often the refresh loop looks at its clocks.
TICK_S = 0.5

UNKNOWN = (NONE_TAG, NONE_TAG)


def region_tags(regions: Mapping[int, tuple[str | None, str]]) -> dict[int, str]:
    """Region id -> its codes from the top, slash-separated: ``thai-nguyen/dai-tu/an-khanh``.
    A code that repeats its parent's (``thai-nguyen.dai-tu`` under ``thai-nguyen``) contributes
    its own last part; a region without a code contributes its id."""
    out: dict[int, str] = {}
    for region_id, (_code, path) in regions.items():
        parts: list[str] = []
        parent_code: str | None = None
        for ancestor in (int(p) for p in path.strip("/").split("/") if p):
            code = regions.get(ancestor, (None, ""))[0]
            if code is None:
                parts.append(str(ancestor))
            elif parent_code and code.startswith(parent_code + "."):
                parts.append(code[len(parent_code) + 1:])
            else:
                parts.append(code)
            parent_code = code
        out[region_id] = "/".join(parts) or str(region_id)
    return out


def build_tags(regions: Mapping[int, tuple[str | None, str]],
               receivers: Iterable[tuple[str, int | None, int | None]]) -> dict[str, tuple[str, str]]:
    paths = region_tags(regions)
    # One tags tuple per station, shared by its receivers (about 110 bytes less per receiver
    # than a tuple and a station string each).
    shared: dict[tuple[int | None, int | None], tuple[str, str]] = {}
    out: dict[str, tuple[str, str]] = {}
    for rid, station, region_id in receivers:
        tags = shared.get((station, region_id))
        if tags is None:
            tags = shared[(station, region_id)] = (
                str(station) if station is not None else NONE_TAG,
                paths.get(region_id, NONE_TAG) if region_id is not None else NONE_TAG)
        out[rid] = tags
    return out


class TagCache:
    def __init__(self, sessions: sessionmaker[Session] | None, *, refresh_s: float = REFRESH_S,
                 unknown_refresh_s: float = UNKNOWN_REFRESH_S) -> None:
        self._sessions = sessions
        self.refresh_s = refresh_s
        self.unknown_refresh_s = unknown_refresh_s
        self._tags: dict[str, tuple[str, str]] = {}
        self._saw_unknown = False
        self._invalidated = True
        self.loaded_at: float | None = None  # monotonic
        self.last_error: str | None = None

    def __len__(self) -> int:
        return len(self._tags)

    def tags_of(self, receiver_id: str) -> tuple[str, str]:
        """(station, region) of a receiver; ``none`` for what is not known."""
        tags = self._tags.get(receiver_id)
        if tags is None:
            self._saw_unknown = True
            return UNKNOWN
        return tags

    def invalidate(self) -> None:
        """The registry changed: reload at the next tick."""
        self._invalidated = True

    def load(self) -> None:
        """Read the registry and swap the new table in (one assignment: readers on other
        threads see the old or the new table, never a half-built one)."""
        if self._sessions is None:
            return
        with session_scope(self._sessions) as session:
            repository = TagRepository(session)
            tags = build_tags(repository.regions(), repository.receiver_stations())
        self._tags = tags
        self.loaded_at = time.monotonic()
        self.last_error = None

    def _due(self, now: float) -> bool:
        if self._invalidated or self.loaded_at is None:
            return True
        age = now - self.loaded_at
        return age >= self.refresh_s or (self._saw_unknown and age >= self.unknown_refresh_s)

    async def run(self) -> None:
        """Keep the cache fresh until cancelled. A failed load keeps the old table."""
        failed_at = -float("inf")
        while True:
            now = time.monotonic()
            if self._due(now) and now - failed_at >= self.unknown_refresh_s:
                self._invalidated = self._saw_unknown = False
                try:
                    await asyncio.to_thread(self.load)
                except Exception as exc:  # the database is down: keep the tags we have
                    failed_at = now
                    self._invalidated = True
                    self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
                    log.warning("telemetry tags not refreshed from the registry: %s", self.last_error)
            await asyncio.sleep(TICK_S)
