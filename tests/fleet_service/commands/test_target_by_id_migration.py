"""Migration 0009 moves the commands' targets from a copied path and a text reference to an id
column of their kind, and back, on SQLite and PostgreSQL, with the rows already there."""

from __future__ import annotations

from datetime import datetime

from alembic import command
from sqlalchemy import text

from fleet_service.db import make_engine
from fleet_service.migrations import alembic_config, upgrade

BEFORE = "0008"

# (id, kind, ref, path as it was copied when sent)
COMMANDS = [("c-region", "region", "2", "/1/2/"), ("c-station", "station", "5", "/1/2/"),
            ("c-receiver", "receiver", "rx-1", "/1/2/"), ("c-fleet", "fleet", "", "/"),
            ("c-loose", "receiver", "rx-2", "/")]


def _rows(url: str, sql: str) -> list[tuple]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]
    finally:
        engine.dispose()


def test_commands_keep_their_targets_through_0009_and_back(db_url: str) -> None:
    command.downgrade(alembic_config(db_url), BEFORE)
    now = datetime(2026, 12, 1, 8, 0)
    engine = make_engine(db_url)
    with engine.begin() as c:
        c.execute(text("INSERT INTO regions (id, parent_id, name, level, path) VALUES "
                       "(1, NULL, 'Tỉnh', 'tỉnh', '/1/'), (2, 1, 'Huyện', 'huyện', '/1/2/'), "
                       "(3, NULL, 'Tỉnh khác', 'tỉnh', '/3/')"))
        c.execute(text("INSERT INTO stations (id, region_id, name, created_at) VALUES (5, 2, 'Đài', :t)"), {"t": now})
        c.execute(text("INSERT INTO receivers (id, hardware_id, station_id, status, created_at) VALUES "
                       "('rx-1', 'hw-1', 5, 'active', :t), ('rx-2', 'hw-2', NULL, 'active', :t)"), {"t": now})
        for cid, kind, ref, path in COMMANDS:
            c.execute(text("INSERT INTO commands (id, op, priority, params, target_kind, target_ref, target_name, "
                           "target_path, issuer_name, issued_at, expires_at) VALUES (:id, 'play', 'normal', '{}', "
                           ":kind, :ref, 'tên', :path, 'admin', :t, :t)"),
                      {"id": cid, "kind": kind, "ref": ref, "path": path, "t": now})
    engine.dispose()

    upgrade(db_url)
    assert sorted(_rows(db_url, "SELECT id, target_kind, target_region_id, target_station_id, target_receiver_id "
                                "FROM commands")) == [
        ("c-fleet", "fleet", None, None, None), ("c-loose", "receiver", None, None, "rx-2"),
        ("c-receiver", "receiver", None, None, "rx-1"), ("c-region", "region", 2, None, None),
        ("c-station", "station", None, 5, None)]

    # The district moves to the other province; a downgrade writes the paths as they are now.
    engine = make_engine(db_url)
    with engine.begin() as c:
        c.execute(text("UPDATE regions SET parent_id = 3, path = '/3/2/' WHERE id = 2"))
    engine.dispose()
    command.downgrade(alembic_config(db_url), BEFORE)
    assert sorted(_rows(db_url, "SELECT id, target_kind, target_ref, target_path FROM commands")) == [
        ("c-fleet", "fleet", "", "/"), ("c-loose", "receiver", "rx-2", "/"), ("c-receiver", "receiver", "rx-1", "/3/2/"),
        ("c-region", "region", "2", "/3/2/"), ("c-station", "station", "5", "/3/2/")]
    upgrade(db_url)
