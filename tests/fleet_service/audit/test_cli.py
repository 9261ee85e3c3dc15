"""`loa` commands that change the database are recorded as the API's requests are: who (the
operating-system user and host), what, on what, and how it ended; secrets redacted."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fleet_service.audit.models import AuditEntry
from fleet_service.cli import app
from fleet_service.config import get_settings
from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.timefmt import local_text
from tests.support.fleet import provision_fleet

Loa = Callable[..., str]
PASSWORD = "mật khẩu của người vận hành"


@pytest.fixture
def loa(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loa]:
    monkeypatch.setenv("LOA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, code: int = 0, input: str | None = None) -> str:
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    yield run
    get_settings.cache_clear()


def _rows(db_url: str) -> list[AuditEntry]:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    finally:
        engine.dispose()


def test_cli_changes_are_recorded_and_listed(loa: Loa, db_url: str) -> None:
    engine = make_engine(db_url)
    fleet = provision_fleet(make_sessionmaker(engine), receivers=2)
    engine.dispose()

    loa("receivers", "revoke", "rx-0")
    loa("receivers", "revoke", "khong-co", code=1)
    loa("receivers", "list")                      # reads are not recorded
    loa("receivers", "show", "rx-1")
    loa("stations", "history", str(fleet.station_ids[0]))
    loa("users", "create", "op.hungson", "--role", "operator", "--region", str(fleet.region_id),
        "--password", PASSWORD)
    loa("users", "password", "op.hungson", input=f"{PASSWORD} mới\n{PASSWORD} mới\n")
    token = loa("tokens", "create", "op.hungson", "--name", "grafana").splitlines()[1]

    rows = _rows(db_url)
    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"
    assert [(r.actor, r.action, r.target, r.status, r.outcome) for r in rows] == [
        (actor, "loa receivers revoke", "receiver_id=rx-0", 0, "ok"),
        (actor, "loa receivers revoke", "receiver_id=khong-co", 1, "refused"),
        (actor, "loa users create", f"username=op.hungson, role=operator, region={fleet.region_id}, password=***",
         0, "ok"),
        (actor, "loa users password", "username=op.hungson", 0, "ok"),
        (actor, "loa tokens create", "username=op.hungson, name=grafana", 0, "ok"),
    ]
    assert rows[1].detail == "Không tìm thấy thiết bị thu khong-co / Receiver khong-co not found"
    assert all(r.source == "cli" and r.client == socket.gethostname() for r in rows)
    stored = repr([[getattr(r, c.key) for c in AuditEntry.__table__.columns] for r in rows])
    assert PASSWORD not in stored and token not in stored

    # `loa audit list`: newest first, in Vietnam time, filtered; and not itself recorded.
    listing = loa("audit", "list", "--action", "loa receivers revoke")
    lines = [line for line in listing.splitlines() if "loa receivers revoke" in line]
    assert len(lines) == 2 and "khong-co" in lines[0] and "rx-0" in lines[1]
    assert local_text(rows[0].at) in lines[1] and "Giờ Việt Nam / Vietnam time" in listing
    assert "bị từ chối / refused (1)" in lines[0]
    assert "op.hungson" not in loa("audit", "list", "--actor", "someone-else")
    assert len(_rows(db_url)) == 5
