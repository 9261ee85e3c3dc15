from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fleet_service.auth.world import World, running_api


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    with running_api(db_url) as w:
        yield w
