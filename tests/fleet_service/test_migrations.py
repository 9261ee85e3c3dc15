"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and
they can be rolled back and forward again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fleet_service.db import make_engine
from fleet_service.migrations import alembic_config, upgrade
from fleet_service.models import Base


def _diffs(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(db_url: str) -> None:
    assert _diffs(db_url) == []
    assert _tables(db_url) == set(Base.metadata.tables)


def test_downgrade_to_nothing_and_upgrade_again(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), "base")
    assert _tables(db_url) == set()
    upgrade(db_url)
    assert _diffs(db_url) == []
