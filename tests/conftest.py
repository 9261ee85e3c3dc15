from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.migrations import upgrade
from tests.support.postgres import postgres_available, scratch_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A migrated, empty database: SQLite in a temp dir, and PostgreSQL on the local server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'loa.db'}"
        upgrade(url)
        yield url
    else:
        if not postgres_available():
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; the test command starts it")
        with scratch_database() as url:
            upgrade(url)
            yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'loa.db'}"
    upgrade(url)
    return url


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    engine.dispose()
