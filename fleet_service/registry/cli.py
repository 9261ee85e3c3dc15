"""``loa regions``, ``loa stations``, ``loa receivers``: the registry from a terminal.

Run on the server by whoever administers it, so these commands see the whole fleet. Output
is for people: Vietnamese first, English alongside, times in Vietnam time."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
import yaml

from fleet_service.cli_runtime import loa_command
from fleet_service.cli_support import error, print_table
from fleet_service.db import session_scope
from fleet_service.outbox.cli import follow_in_cli
from fleet_service.registry import service
from fleet_service.registry.models import Receiver, ReceiverStatus, Region, Station
from fleet_service.registry.names import vietnamese_key
from fleet_service.registry.schemas import (
    NewReceiver,
    ProvisionedCredential,
    ReceiverCreate,
    ReceiverUpdate,
    RegionCreate,
    RegionUpdate,
    StationCreate,
)
from fleet_service.timefmt import local_text

regions_app = typer.Typer(no_args_is_help=True)
stations_app = typer.Typer(no_args_is_help=True)
receivers_app = typer.Typer(no_args_is_help=True)


def _credential(credential: ProvisionedCredential) -> None:
    typer.echo(f"Tài khoản MQTT / MQTT username: {credential.mqtt_username}")
    typer.echo(f"Mật khẩu MQTT / MQTT password:  {credential.mqtt_password}")
    typer.echo("Mật khẩu chỉ hiện một lần này: hãy nạp ngay vào thiết bị.")
    typer.echo("The password is shown this once only: load it into the receiver now.")


# --- regions -----------------------------------------------------------------------------

def _tree_rows(regions: Sequence[Region]) -> list[tuple[object, ...]]:
    """Depth-first, siblings in Vietnamese order, names indented by depth."""
    ids = {r.id for r in regions}
    children: dict[int | None, list[Region]] = {}
    for r in regions:
        children.setdefault(r.parent_id if r.parent_id in ids else None, []).append(r)
    rows: list[tuple[object, ...]] = []

    def walk(parent: int | None, depth: int) -> None:
        for r in sorted(children.get(parent, []), key=lambda x: (vietnamese_key(x.name), x.id)):
            rows.append((r.id, "  " * depth + r.name, r.level, r.code))
            walk(r.id, depth + 1)

    walk(None, 0)
    return rows


@regions_app.command("list")
def regions_list(
    root: Annotated[int | None, typer.Option(help="Chỉ nhánh của đơn vị này / only this region's subtree")] = None,
) -> None:
    """Cây đơn vị hành chính / the region tree."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        regions = service.list_regions(session, root_id=root)
        if not regions:
            typer.echo("Chưa có đơn vị nào / no regions yet (loa regions import --demo)")
            return
        print_table(["ID", "Tên / name", "Cấp / level", "Mã / code"], _tree_rows(regions))


@regions_app.command("create")
def regions_create(
    name: Annotated[str, typer.Argument(help="Tên / name")],
    level: Annotated[str, typer.Option(help="Cấp: tỉnh, huyện, xã, thị trấn, ... / level")],
    parent: Annotated[int | None, typer.Option(help="ID đơn vị cấp trên / parent region id")] = None,
    code: Annotated[str | None, typer.Option(help="Mã ổn định, duy nhất / stable unique code")] = None,
) -> None:
    """Tạo đơn vị / create a region."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        region = service.create_region(session, RegionCreate(name=name, level=level, code=code, parent_id=parent))
        typer.echo(f"Đã tạo đơn vị / created region {region.id}: {region.level} {region.name} ({region.path})")


@regions_app.command("rename")
def regions_rename(
    region_id: int,
    name: Annotated[str, typer.Argument(help="Tên mới / new name")],
    level: Annotated[str | None, typer.Option(help="Cấp mới / new level")] = None,
) -> None:
    """Đổi tên đơn vị / rename a region."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        region = service.update_region(session, region_id, RegionUpdate(name=name, level=level))
        typer.echo(f"Đã đổi tên / renamed {region.id}: {region.level} {region.name}")


@regions_app.command("move")
def regions_move(
    region_id: int,
    parent: Annotated[int | None, typer.Option(help="ID đơn vị cấp trên mới / new parent id")] = None,
    top: Annotated[bool, typer.Option("--top", help="Thành đơn vị cấp cao nhất / make it a top-level region")] = False,
) -> None:
    """Chuyển đơn vị sang đơn vị cấp trên khác (cả nhánh đi theo) / re-parent a region with its subtree."""
    if (parent is None) == (not top):
        typer.echo("Chọn --parent ID hoặc --top / give either --parent ID or --top", err=True)
        raise typer.Exit(2)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        region = service.move_region(session, region_id, parent)
        typer.echo(f"Đã chuyển / moved {region.name}: {region.path}")


@regions_app.command("delete")
def regions_delete(region_id: int) -> None:
    """Xoá đơn vị (chỉ khi không còn đơn vị con và đài) / delete an empty region."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.delete_region(session, region_id)
        typer.echo(f"Đã xoá đơn vị / deleted region {region_id}")


@regions_app.command("import")
def regions_import(
    file: Annotated[Path | None, typer.Argument(help="Tệp YAML hoặc JSON / YAML or JSON file", exists=True,
                                                 dir_okay=False)] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Dữ liệu mẫu huyện Đại Từ / the Đại Từ demo inventory")] = False,
) -> None:
    """Nhập cây đơn vị và đài (chạy lại an toàn) / import regions and stations (safe to repeat)."""
    if (file is None) == (not demo):
        typer.echo("Chọn một tệp hoặc --demo / give a file or --demo", err=True)
        raise typer.Exit(2)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) if file is not None else service.demo_inventory()
    except yaml.YAMLError as exc:
        typer.echo(f"Lỗi: tệp không đọc được / Error: unreadable file: {exc}", err=True)
        raise typer.Exit(1) from None
    if not isinstance(data, dict):
        typer.echo("Lỗi: tệp phải có khoá 'regions' / Error: the file needs a 'regions' key", err=True)
        raise typer.Exit(1)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        s = service.import_regions(session, data)
    typer.echo(f"Đơn vị / regions: tạo mới / created {s.regions_created}, cập nhật / updated {s.regions_updated}")
    typer.echo(f"Đài / stations:   tạo mới / created {s.stations_created}, cập nhật / updated {s.stations_updated}")


# --- stations ----------------------------------------------------------------------------

def _station_rows(stations: Sequence[Station]) -> list[tuple[object, ...]]:
    return [(s.id, s.name, s.region.name, s.address) for s in stations]


@stations_app.command("list")
def stations_list(
    region: Annotated[int | None, typer.Option(help="Chỉ trong đơn vị này / only within this region")] = None,
) -> None:
    """Danh sách đài / list stations."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        stations = service.list_stations(session, region_id=region)
        if not stations:
            typer.echo("Không có đài nào / no stations")
            return
        print_table(["ID", "Đài / station", "Đơn vị / region", "Địa chỉ / address"], _station_rows(stations))


@stations_app.command("create")
def stations_create(
    region_id: Annotated[int, typer.Argument(help="ID đơn vị / region id")],
    name: Annotated[str, typer.Argument(help="Tên đài / station name")],
    lat: Annotated[float | None, typer.Option(help="Vĩ độ / latitude")] = None,
    lon: Annotated[float | None, typer.Option(help="Kinh độ / longitude")] = None,
    address: Annotated[str | None, typer.Option(help="Địa chỉ / address")] = None,
    notes: Annotated[str | None, typer.Option(help="Ghi chú / notes")] = None,
) -> None:
    """Tạo đài / create a station."""
    data = StationCreate(region_id=region_id, name=name, latitude=lat, longitude=lon, address=address, notes=notes)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        station = service.create_station(session, data)
        typer.echo(f"Đã tạo đài / created station {station.id}: {station.name}")


@stations_app.command("delete")
def stations_delete(station_id: int) -> None:
    """Xoá đài chưa từng có thiết bị / delete a station that never had receivers."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        service.delete_station(session, station_id)
        typer.echo(f"Đã xoá đài / deleted station {station_id}")


@stations_app.command("history")
def stations_history(station_id: int) -> None:
    """Thiết bị nào phục vụ đài, từ khi nào / which receiver served the station, when."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        station = service.get_station(session, station_id)
        history = service.station_history(session, station_id)
        typer.echo(f"{station.name} (ID {station.id}) — giờ Việt Nam / Vietnam time")
        if not history:
            typer.echo("Chưa có thiết bị nào / no receivers yet")
            return
        rows = [(a.receiver_id, local_text(a.start_at), local_text(a.end_at) if a.end_at else "nay / now", a.note)
                for a in history]
        print_table(["Thiết bị / receiver", "Từ / from", "Đến / to", "Ghi chú / note"], rows)


# --- receivers ---------------------------------------------------------------------------

_STATUS_TEXT = {
    ReceiverStatus.ACTIVE: "hoạt động / active",
    ReceiverStatus.REVOKED: "đã thu hồi / revoked",
    ReceiverStatus.RETIRED: "ngừng sử dụng / retired",
}


def _status(value: str) -> str:
    return _STATUS_TEXT[ReceiverStatus(value)]


@receivers_app.command("list")
def receivers_list(
    station: Annotated[int | None, typer.Option(help="ID đài / station id")] = None,
    region: Annotated[int | None, typer.Option(help="ID đơn vị (cả nhánh) / region id (whole subtree)")] = None,
    status: Annotated[ReceiverStatus | None, typer.Option(help="Trạng thái / status")] = None,
) -> None:
    """Danh sách thiết bị thu / list receivers."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        receivers = service.list_receivers(session, station_id=station, region_id=region, status=status)
        if not receivers:
            typer.echo("Không có thiết bị nào / no receivers")
            return
        rows = [(r.id, r.hardware_id, r.station.name if r.station else None, _status(r.status), r.firmware_version)
                for r in receivers]
        print_table(["Thiết bị / receiver", "Mã phần cứng / hardware", "Đài / station", "Trạng thái / status",
                     "Phần mềm / firmware"], rows)


def _show(receiver: Receiver) -> None:
    station = f"{receiver.station.name} (ID {receiver.station_id})" if receiver.station else "—"
    for label, value in [
        ("Thiết bị / receiver", receiver.id),
        ("Mã phần cứng / hardware id", receiver.hardware_id),
        ("Đài / station", station),
        ("Trạng thái / status", _status(receiver.status)),
        ("Phần mềm / firmware", receiver.firmware_version or "—"),
        ("Toạ độ / position", f"{receiver.latitude}, {receiver.longitude}" if receiver.latitude is not None else "—"),
        ("Ghi chú / notes", receiver.notes or "—"),
        ("Đăng ký lúc / registered", f"{local_text(receiver.created_at)} (giờ Việt Nam / Vietnam time)"),
    ]:
        typer.echo(f"{label + ':':30} {value}")


@receivers_app.command("show")
def receivers_show(receiver_id: str) -> None:
    """Thông tin một thiết bị / one receiver."""
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        _show(service.get_receiver(session, receiver_id))


@receivers_app.command("register")
def receivers_register(
    receiver_id: Annotated[str, typer.Argument(help="Mã thiết bị = tài khoản MQTT / receiver id = MQTT username")],
    hardware_id: Annotated[str, typer.Option(help="IMEI hoặc MAC / IMEI or MAC")],
    station: Annotated[int | None, typer.Option(help="ID đài / station id")] = None,
    firmware: Annotated[str | None, typer.Option(help="Phiên bản phần mềm / firmware version")] = None,
    lat: Annotated[float | None, typer.Option(help="Vĩ độ / latitude")] = None,
    lon: Annotated[float | None, typer.Option(help="Kinh độ / longitude")] = None,
    notes: Annotated[str | None, typer.Option(help="Ghi chú / notes")] = None,
) -> None:
    """Đăng ký thiết bị thu (sau đó cấp mật khẩu bằng 'provision') / register a receiver."""
    data = ReceiverCreate(id=receiver_id, hardware_id=hardware_id, station_id=station, firmware_version=firmware,
                          latitude=lat, longitude=lon, notes=notes)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        receiver = service.register_receiver(session, data)
        typer.echo(f"Đã đăng ký / registered {receiver.id}. Tiếp theo / next: loa receivers provision {receiver.id}")


@receivers_app.command("move")
def receivers_move(
    receiver_id: str,
    station: Annotated[int | None, typer.Option(help="ID đài mới / new station id")] = None,
    unassign: Annotated[bool, typer.Option("--unassign", help="Gỡ khỏi đài / take it off its station")] = False,
) -> None:
    """Chuyển thiết bị sang đài khác / move a receiver to another station."""
    if (station is None) == (not unassign):
        typer.echo("Chọn --station ID hoặc --unassign / give either --station ID or --unassign", err=True)
        raise typer.Exit(2)
    with loa_command() as runtime, session_scope(runtime.sessions) as session:
        receiver = service.update_receiver(session, receiver_id, ReceiverUpdate(station_id=station))
        where = receiver.station.name if receiver.station else "—"
        typer.echo(f"Đã chuyển / moved {receiver.id} → {where}")


# The receiver firmware's defaults for the settings provisioning writes (DEFAULTS in
# firmware/loa/config.py; tests/fleet_service/registry/test_cli.py checks that they agree).
# A receiver's config.json holds only what differs from them, so that a firmware update can
# change a default for every receiver that did not override it.
FIRMWARE_DEFAULTS: dict[str, object] = {"port": 8883, "apn": "v-internet", "ca": "ca.crt"}

# A host name or IPv4 address, without scheme or port.
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
# An APN network identifier (3GPP TS 23.003: labels of letters, digits and '-', at most 100).
_APN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,98}[A-Za-z0-9])?$")
# The CA certificate's file name on the receiver's flash.
_CA = re.compile(r"^/?[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}(?:/[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})*$")


def _usage_error(vi: str, en: str) -> typer.Exit:
    return error(vi, en, 2)


def _device_settings(host: str | None, port: int | None, apn: str | None, ca: str | None,
                     server_name: str | None = None) -> dict[str, object]:
    """The broker and link settings of a receiver's config.json (without its login), checked;
    only those that differ from the firmware's defaults."""
    if host is None:
        raise _usage_error("cần --host: địa chỉ broker mà thiết bị kết nối tới",
                           "--config-out needs --host: the broker address the receiver connects to")
    if not _HOST.match(host) or ".." in host:
        raise _usage_error(f"--host '{host}' không hợp lệ: chỉ tên máy hoặc địa chỉ IPv4, không có 'mqtts://' "
                           "hay ':cổng' (dùng --port)",
                           f"--host '{host}' is not valid: a host name or IPv4 address only, without 'mqtts://' "
                           "or ':port' (use --port)")
    settings: dict[str, object] = {"host": host}
    if server_name is not None and (not _HOST.match(server_name) or ".." in server_name):
        raise _usage_error(f"--server-name '{server_name}' không hợp lệ: tên máy trong chứng chỉ của broker",
                           f"--server-name '{server_name}' is not valid: the host name in the broker's certificate")
    if port is not None and not 1 <= port <= 65535:
        raise _usage_error(f"cổng --port {port} không hợp lệ: phải từ 1 đến 65535",
                           f"--port {port} is not a valid port: it must be 1 to 65535")
    if apn is not None and (not _APN.match(apn) or ".." in apn):
        raise _usage_error(f"APN '{apn}' không hợp lệ: chữ không dấu, số, '-' và '.' (ví dụ v-internet)",
                           f"APN '{apn}' is not valid: letters, digits, '-' and '.' (e.g. v-internet)")
    if ca is not None and (not _CA.match(ca) or ".." in ca.split("/")):
        raise _usage_error(f"--ca '{ca}' không hợp lệ: tên tệp chứng chỉ CA trên bộ nhớ thiết bị (ví dụ ca.crt)",
                           f"--ca '{ca}' is not valid: the CA certificate's file name on the receiver (e.g. ca.crt)")
    for key, value in (("port", port), ("apn", apn), ("ca", ca)):
        if value is not None and value != FIRMWARE_DEFAULTS[key]:
            settings[key] = value
    if server_name is not None and server_name != host:
        settings["server_name"] = server_name
    return settings


def _exists_error(path: Path) -> typer.Exit:
    return error(f"tệp {path} đã có; dùng --force để ghi đè. Chưa cấp mật khẩu mới.",
                 f"{path} already exists; --force overwrites it. No new password was issued.")


def _write_private(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` to ``path``, readable and writable by its owner only (it holds a
    password). Without ``force`` an existing file is never touched; with it, the file is
    replaced whole."""
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if force else path
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise _exists_error(path) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # whatever the umask
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


@receivers_app.command("provision")
def receivers_provision(
    receiver_id: str,
    config_out: Annotated[Path | None, typer.Option(
        "--config-out", help="Ghi luôn tệp config.json của thiết bị (quyền 0600) / also write the receiver's "
                             "config.json here (mode 0600)")] = None,
    host: Annotated[str | None, typer.Option(help="Địa chỉ broker / broker host (with --config-out)")] = None,
    port: Annotated[int | None, typer.Option(help="Cổng TLS của broker / broker TLS port (8883)")] = None,
    apn: Annotated[str | None, typer.Option(help="APN của nhà mạng / the SIM's APN (v-internet)")] = None,
    ca: Annotated[str | None, typer.Option(help="Tên tệp CA trên thiết bị / CA file on the receiver (ca.crt)")] = None,
    server_name: Annotated[str | None, typer.Option(
        help="Tên trong chứng chỉ broker nếu khác --host / the broker certificate's name if not --host")] = None,
    force: Annotated[bool, typer.Option("--force", help="Ghi đè tệp đã có / overwrite an existing file")] = False,
) -> None:
    """Cấp mật khẩu MQTT mới (mật khẩu cũ hết hiệu lực) / issue a new MQTT password."""
    settings: dict[str, object] | None = None
    if config_out is None:
        if any(v is not None for v in (host, port, apn, ca, server_name)) or force:
            raise _usage_error("--host, --port, --apn, --ca, --server-name và --force chỉ dùng cùng --config-out",
                               "--host, --port, --apn, --ca, --server-name and --force go with --config-out only")
    else:
        settings = _device_settings(host, port, apn, ca, server_name)
        if not force and (config_out.exists() or config_out.is_symlink()):
            raise _exists_error(config_out)
    with loa_command() as runtime:
        written = False
        try:
            with session_scope(runtime.sessions) as session:
                credential = service.provision(session, receiver_id)
                if config_out is not None and settings is not None:
                    # Written before the commit: if it cannot be, the old password stays valid.
                    device = {"id": credential.receiver_id, "password": credential.mqtt_password, **settings}
                    try:
                        _write_private(config_out, json.dumps(device) + "\n", force=force)
                    except OSError as exc:
                        raise error(f"không ghi được {config_out}: {exc.strerror or exc}. Chưa cấp mật khẩu mới.",
                                    f"cannot write {config_out}: {exc.strerror or exc}. No new password was "
                                    "issued.") from None
                    written = True
        except BaseException:
            if written and config_out is not None:
                config_out.unlink(missing_ok=True)
            raise
        _credential(credential)
        follow_in_cli(runtime, session)
        if config_out is not None and settings is not None:
            ca_file = settings.get("ca", FIRMWARE_DEFAULTS["ca"])
            typer.echo(f"Đã ghi cấu hình thiết bị / wrote the receiver's config: {config_out} (0600)")
            typer.echo(f"Chép vào thiết bị cùng chứng chỉ CA / copy it to the receiver with the CA certificate:\n"
                       f"  mpremote connect /dev/ttyUSB0 fs cp {config_out} :config.json\n"
                       f"  mpremote connect /dev/ttyUSB0 fs cp ca.crt :{ca_file}")
            typer.echo("Tệp có mật khẩu: xoá sau khi chép / the file holds the password: delete it once copied.")


@receivers_app.command("revoke")
def receivers_revoke(receiver_id: str) -> None:
    """Thu hồi quyền đăng nhập của thiết bị / withdraw a receiver's credentials."""
    with loa_command() as runtime:
        with session_scope(runtime.sessions) as session:
            receiver = service.revoke(session, receiver_id)
        typer.echo(f"Đã thu hồi / revoked {receiver.id}: {_status(receiver.status)}")
        follow_in_cli(runtime, session)


@receivers_app.command("replace")
def receivers_replace(
    station_id: Annotated[int, typer.Argument(help="ID đài / station id")],
    old_id: Annotated[str, typer.Argument(help="Thiết bị cũ / old receiver")],
    new_id: Annotated[str, typer.Argument(help="Thiết bị mới / new receiver")],
    hardware_id: Annotated[str, typer.Option(help="IMEI hoặc MAC của thiết bị mới / new receiver's IMEI or MAC")],
    firmware: Annotated[str | None, typer.Option(help="Phiên bản phần mềm / firmware version")] = None,
    note: Annotated[str | None, typer.Option(help="Lý do / reason")] = None,
    provision: Annotated[bool, typer.Option("--provision", help="Cấp luôn mật khẩu / also issue its password")] = False,
) -> None:
    """Thay thiết bị của đài; lịch sử đài được giữ / replace a station's receiver, keeping its history."""
    new = NewReceiver(id=new_id, hardware_id=hardware_id, firmware_version=firmware)
    credential = None
    with loa_command() as runtime:
        with session_scope(runtime.sessions) as session:
            old, replacement = service.replace_receiver(session, station_id, old_id, new, note=note)
            if provision:
                credential = service.provision(session, replacement.id)
        typer.echo(f"Đã thay / replaced {old.id} → {replacement.id}; {old.id}: {_status(old.status)}")
        if credential is not None:
            _credential(credential)
        else:
            typer.echo(f"Tiếp theo / next: loa receivers provision {replacement.id}")
        follow_in_cli(runtime, session)
