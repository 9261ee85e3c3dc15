"""Real servers for the dashboards' queries: a scratch PostgreSQL database holding the registry
and a quarter of uptime ledger written by the service's own code, and a private InfluxDB 1.6.7
holding a day of telemetry written as the service's writer writes it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.orm import Session, sessionmaker

from dashboards import HERE as DASHBOARDS_DIR
from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.migrations import upgrade
from fleet_service.telemetry.points import PRECISION
from tests.dashboards import fleet_data
from tests.support.influxdb1 import Influx1, influx1
from tests.support.postgres import ADMIN_DSN, postgres_available, scratch_database

INFLUX_DATABASE = "loa"
GRANTS = DASHBOARDS_DIR / "postgres" / "grafana-reader.sql"
# The writer's timestamp precision, as /write spells it.
_LINE_PROTOCOL_PRECISION = {"s": "s", "ms": "ms", "us": "u", "ns": "ns"}


@dataclass
class LedgerDatabase:
    url: str              # SQLAlchemy URL (the service's own login)
    reader_dsn: str       # libpq DSN of the read-only Grafana login
    sessions: sessionmaker[Session]
    registry: fleet_data.Registry
    incidents: dict[str, int] = field(default_factory=dict)  # alert incidents' ids by name


@dataclass
class TelemetryDatabase:
    server: Influx1
    records: list[fleet_data.TelemetryRecord]
    events: list[fleet_data.EventRecord]


@pytest.fixture(scope="module")
def ledger_db() -> Iterator[LedgerDatabase]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432; the test command starts it")
    reader = f"grafana_test_{uuid.uuid4().hex[:10]}"
    with scratch_database() as url:
        upgrade(url)
        engine = make_engine(url)
        sessions = make_sessionmaker(engine)
        registry = fleet_data.create_registry(sessions)
        fleet_data.write_ledger(sessions, registry.station_of)
        fleet_data.write_firmware(sessions)
        incidents = fleet_data.write_incidents(sessions, registry)
        base = ADMIN_DSN.rsplit("/", 1)[0]
        database = url.rsplit("/", 1)[1]
        psql = shutil.which("psql") or "/usr/bin/psql"
        subprocess.run([psql, "-q", "-v", "ON_ERROR_STOP=1", "-v", f"reader={reader}", "-v", "reader_password=pw",
                        "-d", f"{base}/{database}", "-f", str(GRANTS)], check=True, capture_output=True, text=True,
                       timeout=60)
        host_part = base.split("://", 1)[1].split("@", 1)[-1]
        try:
            yield LedgerDatabase(url, f"postgresql://{reader}:pw@{host_part}/{database}", sessions, registry, incidents)
        finally:
            engine.dispose()
            with psycopg.connect(f"{base}/{database}", autocommit=True) as conn:
                conn.execute(f'DROP OWNED BY "{reader}"')
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{reader}"')


@pytest.fixture(scope="module")
def telemetry_db(tmp_path_factory: pytest.TempPathFactory, ledger_db: LedgerDatabase) -> Iterator[TelemetryDatabase]:
    lines, records, events = fleet_data.telemetry(ledger_db.registry.tags)
    with influx1(Path(tmp_path_factory.mktemp("influx"))) as server:
        server.create_database(INFLUX_DATABASE)
        for i in range(0, len(lines), 5000):
            server.write(INFLUX_DATABASE, "\n".join(lines[i:i + 5000]), precision=_LINE_PROTOCOL_PRECISION[PRECISION])
        yield TelemetryDatabase(server, records, events)
