"""Release bundles: building one from the firmware's sources, signing it, packing it for the
upload, and checking one that arrives. No database: the CLI uses this on the engineers'
machine, the service on every upload.

A bundle is a directory:

    manifest.json   canonical JSON (schemas.Manifest): format, version, hardware, min_version,
                    mpy_version, files [{path, length, sha256}], total_length
    manifest.sig    {"algorithm": "ed25519", "key_id": ..., "signature": base64}, over the
                    exact bytes of manifest.json
    loa/...         the application package's modules compiled to .mpy

and travels to the service as an uncompressed tar of those files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from fleet_service.errors import BilingualValueError, Invalid, describe_validation
from fleet_service.firmware import keys
from fleet_service.firmware.mpy import compile_package, mpy_version
from fleet_service.firmware.schemas import (
    MANIFEST_NAME,
    MAX_FILES,
    MAX_MANIFEST_BYTES,
    MAX_SIGNATURE_FILE_BYTES,
    MAX_TOTAL_LENGTH,
    PACKAGE,
    SIGNATURE_NAME,
    Manifest,
    ManifestFile,
    SignatureFile,
    check_hardware,
    check_path,
    parse_version,
)

# The largest upload: the files, the two small JSON files, and the tar's headers and padding
# (1 KiB per file at most).
MAX_UPLOAD_BYTES = MAX_TOTAL_LENGTH + MAX_MANIFEST_BYTES + MAX_SIGNATURE_FILE_BYTES + (MAX_FILES + 8) * 1024
_MAX_TAR_ENTRIES = MAX_FILES + 64  # files, the two JSON files, and directory entries
TAR_CONTENT_TYPE = "application/x-tar"


class BundleRefused(Invalid):
    """A bundle that is not accepted, saying why in both languages; ``code`` names the reason
    for programs (unsigned, unknown_key, bad_signature, malformed_manifest, ...)."""

    def __init__(self, code: str, message_vi: str, message_en: str) -> None:
        super().__init__(f"Gói firmware bị từ chối: {message_vi}", f"Firmware bundle refused: {message_en}")
        self.code = code


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def manifest_bytes(manifest: Manifest) -> bytes:
    return canonical_json(manifest.model_dump(mode="json"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- building ---------------------------------------------------------------------------------

# How the firmware states its own version (firmware/loa/__init__.py), which it reports in its
# births and telemetry ("fw": "loa-fw-<VERSION>").
_SOURCE_VERSION = re.compile(r'^VERSION = "([^"]*)"$', re.MULTILINE)


def source_version(source: Path) -> str | None:
    """The version the firmware in ``source`` says it is (``VERSION`` in loa/__init__.py)."""
    try:
        found = _SOURCE_VERSION.search((source / PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    except OSError:
        return None
    return found.group(1) if found else None


def build(source: Path, out: Path, *, hardware: str, min_version: str, version: str | None = None,
          force: bool = False) -> Manifest:
    """Compile ``source/loa`` (the repository's firmware/) into the bundle directory ``out``,
    with its manifest; unsigned. Made beside ``out`` and renamed into place, so that a failed
    build leaves nothing. The same sources and compiler give the same bytes.

    The release's version is the one the firmware reports (``VERSION`` in loa/__init__.py): a
    ``version`` that differs is refused, or a receiver that installed the release would say it
    runs another one."""
    package = source / PACKAGE
    if not package.is_dir():
        raise BundleRefused("no_sources", f"không có thư mục {package}", f"there is no directory {package}")
    stated = source_version(source)
    if version is None:
        if stated is None:
            raise BundleRefused("no_version", f"{package}/__init__.py không ghi VERSION: cần --version",
                                f"{package}/__init__.py states no VERSION: give --version")
        version = stated
    elif stated is not None and stated != version:
        raise BundleRefused("version_differs",
                            f"firmware tự báo phiên bản {stated} (VERSION trong {package}/__init__.py), không phải "
                            f"{version}: sửa VERSION trước khi đóng gói",
                            f"the firmware reports version {stated} (VERSION in {package}/__init__.py), not {version}: "
                            f"change VERSION before building")
    _check_options(version=version, hardware=hardware, min_version=min_version)
    if out.exists() and not force:
        raise BundleRefused("exists", f"{out} đã có; dùng --force để ghi đè", f"{out} exists; use --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.with_name(f".{out.name}.build-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    try:
        shutil.copytree(package, work / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        others = sorted(p.relative_to(work).as_posix() for p in (work / PACKAGE).rglob("*")
                        if p.is_file() and p.suffix != ".py")
        if others:
            raise BundleRefused("not_a_module", f"chỉ các module .py được đóng gói, còn có: {', '.join(others)}",
                                f"only .py modules are packed, but there are also: {', '.join(others)}")
        compiled = compile_package(work, PACKAGE)
        files = [_file_entry(path.relative_to(work).as_posix(), path.read_bytes()) for path in compiled]
        files.sort(key=lambda f: f.path)
        manifest = _validated({"format": 1, "version": version, "hardware": hardware, "min_version": min_version,
                               "mpy_version": mpy_version(), "files": [f.model_dump() for f in files],
                               "total_length": sum(f.length for f in files)})
        data = manifest_bytes(manifest)
        parse_manifest(data)  # within what a receiver can hold
        (work / MANIFEST_NAME).write_bytes(data)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _check_options(**options: str) -> None:
    """The manifest's own fields, checked before anything is compiled."""
    try:
        for name in ("version", "min_version"):
            try:
                parse_version(options[name])
            except BilingualValueError as exc:
                raise BilingualValueError(f"'{name}': {exc.message_vi}", f"'{name}': {exc.message_en}") from None
        try:
            check_hardware(options["hardware"])
        except BilingualValueError as exc:
            raise BilingualValueError(f"'hardware': {exc.message_vi}", f"'hardware': {exc.message_en}") from None
        if parse_version(options["min_version"]) > parse_version(options["version"]):
            raise BilingualValueError(f"min_version {options['min_version']} cao hơn version {options['version']}",
                                      f"min_version {options['min_version']} is above version {options['version']}")
    except BilingualValueError as exc:
        raise BundleRefused("malformed_manifest", f"{MANIFEST_NAME} {exc.message_vi}",
                            f"{MANIFEST_NAME} {exc.message_en}") from None


def _file_entry(path: str, data: bytes) -> ManifestFile:
    return ManifestFile(path=path, length=len(data), sha256=_sha256(data))


# --- reading, checking ------------------------------------------------------------------------

def _json_object(data: bytes, name: str, code: str) -> dict[str, Any]:
    """A JSON object without duplicate keys, written canonically: no two parsers (this one,
    the receiver's) may read the signed bytes differently."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys_seen = [k for k, _ in pairs]
        if len(set(keys_seen)) != len(keys_seen):
            raise BilingualValueError(f"{name} có khoá lặp lại", f"{name} repeats a key")
        return dict(pairs)

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicates)
    except BilingualValueError as exc:
        raise BundleRefused(code, exc.message_vi, exc.message_en) from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BundleRefused(code, f"{name} không phải JSON UTF-8 hợp lệ", f"{name} is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise BundleRefused(code, f"{name} phải là một đối tượng JSON", f"{name} must be a JSON object")
    try:
        canonical = canonical_json(value)
    except ValueError:
        canonical = b""
    if canonical != data:
        raise BundleRefused(code, f"{name} không ở dạng chuẩn (khoá theo thứ tự, không khoảng trắng, UTF-8)",
                            f"{name} is not in canonical form (sorted keys, no whitespace, UTF-8)")
    return value


def _validation_refusal(code: str, name: str, exc: ValidationError) -> BundleRefused:
    errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
    _vi, _en, details = describe_validation(errors)
    first = details[0] if details else {"field": "", "problem": "không hợp lệ", "problem_en": "is not valid"}
    where = f"{name} '{first['field']}'" if first["field"] else name
    more_vi = f" (và {len(details) - 1} lỗi khác)" if len(details) > 1 else ""
    more_en = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return BundleRefused(code, f"{where}: {first['problem']}{more_vi}", f"{where}: {first['problem_en']}{more_en}")


def _validated(value: Mapping[str, Any]) -> Manifest:
    try:
        return Manifest.model_validate(value)
    except ValidationError as exc:
        raise _validation_refusal("malformed_manifest", MANIFEST_NAME, exc) from None


def parse_manifest(data: bytes) -> Manifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleRefused("malformed_manifest", f"{MANIFEST_NAME} quá lớn (tối đa {MAX_MANIFEST_BYTES} byte)",
                            f"{MANIFEST_NAME} is too large (at most {MAX_MANIFEST_BYTES} bytes)")
    return _validated(_json_object(data, MANIFEST_NAME, "malformed_manifest"))


def parse_signature(data: bytes) -> tuple[SignatureFile, bytes]:
    if len(data) > MAX_SIGNATURE_FILE_BYTES:
        raise BundleRefused("malformed_signature", f"{SIGNATURE_NAME} quá lớn", f"{SIGNATURE_NAME} is too large")
    value = _json_object(data, SIGNATURE_NAME, "malformed_signature")
    try:
        signature = SignatureFile.model_validate(value)
    except ValidationError as exc:
        raise _validation_refusal("malformed_signature", SIGNATURE_NAME, exc) from None
    return signature, base64.b64decode(signature.signature, validate=True)


def check_files(manifest: Manifest, files: Mapping[str, bytes]) -> None:
    """Exactly the manifest's files, each of its length and SHA-256."""
    named = {f.path for f in manifest.files}
    missing = sorted(named - set(files))
    if missing:
        raise BundleRefused("file_missing", f"thiếu tệp có trong manifest: {', '.join(missing[:5])}",
                            f"files named in the manifest are missing: {', '.join(missing[:5])}")
    extra = sorted(set(files) - named)
    if extra:
        raise BundleRefused("unexpected_file", f"có tệp không có trong manifest: {', '.join(extra[:5])}",
                            f"files not named in the manifest: {', '.join(extra[:5])}")
    for entry in manifest.files:
        data = files[entry.path]
        if len(data) != entry.length:
            raise BundleRefused("file_mismatch", f"{entry.path} dài {len(data)} byte, manifest ghi {entry.length}",
                                f"{entry.path} is {len(data)} bytes long, the manifest says {entry.length}")
        if _sha256(data) != entry.sha256:
            raise BundleRefused("file_mismatch", f"SHA-256 của {entry.path} khác với manifest (tệp đã bị sửa?)",
                                f"the SHA-256 of {entry.path} differs from the manifest's (was the file changed?)")


@dataclass(frozen=True)
class Verified:
    manifest: Manifest
    manifest_bytes: bytes
    signature_bytes: bytes
    key_id: str
    files: dict[str, bytes]


def verify(contents: Mapping[str, bytes], trusted: Sequence[Ed25519PublicKey]) -> Verified:
    """A bundle's files (name -> bytes, as unpack gives them), accepted only when its signature
    verifies against a trusted key, its manifest is well formed, and every file is the one the
    manifest names. The signature is checked first, on the manifest's exact bytes, before
    anything in the manifest is believed."""
    if MANIFEST_NAME not in contents:
        raise BundleRefused("not_a_bundle", f"không có {MANIFEST_NAME}", f"there is no {MANIFEST_NAME}")
    if SIGNATURE_NAME not in contents:
        raise BundleRefused("unsigned", f"gói chưa được ký: không có {SIGNATURE_NAME} (loa firmware sign)",
                            f"the bundle is not signed: there is no {SIGNATURE_NAME} (loa firmware sign)")
    data = contents[MANIFEST_NAME]
    signature, raw_signature = parse_signature(contents[SIGNATURE_NAME])
    if not trusted:
        raise BundleRefused("no_trusted_key", "dịch vụ chưa có khoá công khai tin cậy nào (LOA_FIRMWARE_KEYS)",
                            "the service has no trusted public key (LOA_FIRMWARE_KEYS)")
    by_id = {keys.key_id(k): k for k in trusted}
    key = by_id.get(signature.key_id)
    if key is None:
        known = ", ".join(sorted(by_id))
        raise BundleRefused("unknown_key", f"ký bằng khoá {signature.key_id}, không phải khoá tin cậy ({known})",
                            f"signed with key {signature.key_id}, which is not a trusted key ({known})")
    if not keys.verify(key, raw_signature, data):
        raise BundleRefused("bad_signature",
                            f"chữ ký không khớp với {MANIFEST_NAME} (manifest đã bị sửa sau khi ký?)",
                            f"the signature does not match {MANIFEST_NAME} (was the manifest changed after signing?)")
    manifest = parse_manifest(data)
    files = {name: body for name, body in contents.items() if name not in (MANIFEST_NAME, SIGNATURE_NAME)}
    check_files(manifest, files)
    return Verified(manifest, data, contents[SIGNATURE_NAME], signature.key_id, files)


# --- signing ----------------------------------------------------------------------------------

def read_files(bundle_dir: Path, manifest: Manifest) -> dict[str, bytes]:
    files = {}
    for entry in manifest.files:
        try:
            files[entry.path] = (bundle_dir / entry.path).read_bytes()
        except OSError:
            continue  # named missing by check_files
    return files


def read_manifest(bundle_dir: Path) -> tuple[Manifest, bytes]:
    try:
        data = (bundle_dir / MANIFEST_NAME).read_bytes()
    except OSError as exc:
        raise BundleRefused("not_a_bundle", f"không đọc được {bundle_dir / MANIFEST_NAME} ({exc.strerror})",
                            f"cannot read {bundle_dir / MANIFEST_NAME} ({exc.strerror})") from None
    return parse_manifest(data), data


def sign(bundle_dir: Path, private_key: Path, passphrase: str | None = None) -> SignatureFile:
    """Sign the bundle's manifest.json as it is, after checking that it is well formed and that
    the files beside it are the ones it names; writes manifest.sig. ``passphrase`` opens an
    encrypted key file."""
    key = keys.load_private(private_key, passphrase)
    manifest, data = read_manifest(bundle_dir)
    check_files(manifest, read_files(bundle_dir, manifest))
    signature = SignatureFile(algorithm=keys.ALGORITHM, key_id=keys.key_id(key.public_key()),
                              signature=base64.b64encode(key.sign(data)).decode("ascii"))
    target = bundle_dir / SIGNATURE_NAME
    tmp = target.with_name(f".{SIGNATURE_NAME}.{os.getpid()}.tmp")
    tmp.write_bytes(canonical_json(signature.model_dump()))
    os.replace(tmp, target)
    return signature


# --- the upload's tar -------------------------------------------------------------------------

def pack(bundle_dir: Path) -> bytes:
    """manifest.json, manifest.sig (if there is one) and the files the manifest names, as an
    uncompressed tar with fixed owners, modes and times: the same bundle, the same bytes."""
    manifest, data = read_manifest(bundle_dir)
    members: list[tuple[str, bytes]] = [(MANIFEST_NAME, data)]
    signature = bundle_dir / SIGNATURE_NAME
    if signature.exists():
        members.append((SIGNATURE_NAME, signature.read_bytes()))
    files = read_files(bundle_dir, manifest)
    members += sorted(files.items())
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(body), 0o644, 0
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def unpack(data: bytes) -> dict[str, bytes]:
    """The regular files of an uncompressed tar, by name ("./" in front is dropped); directory
    entries are skipped. Refused: anything that is not a tar, links and other special files,
    a name that is not manifest.json, manifest.sig or a plain path under loa/ (no '..', no
    absolute path), a name twice, too many entries."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise BundleRefused("too_large", f"gói quá lớn (tối đa {MAX_UPLOAD_BYTES} byte)",
                            f"the bundle is too large (at most {MAX_UPLOAD_BYTES} bytes)")
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > _MAX_TAR_ENTRIES:
                    raise BundleRefused("not_a_bundle", f"quá nhiều mục trong gói (tối đa {_MAX_TAR_ENTRIES})",
                                        f"too many entries in the bundle (at most {_MAX_TAR_ENTRIES})")
                name = member.name.removeprefix("./")
                if member.isdir():
                    continue
                if not member.isreg() or member.issparse():
                    raise BundleRefused("not_a_bundle", f"'{name[:200]}' không phải tệp thường (liên kết?)",
                                        f"'{name[:200]}' is not a regular file (a link?)")
                if member.size > len(data):  # what a header claims, before anything is read
                    raise BundleRefused("not_a_bundle", f"'{name[:200]}' ghi độ dài lớn hơn cả gói",
                                        f"'{name[:200]}' claims to be longer than the whole bundle")
                if name not in (MANIFEST_NAME, SIGNATURE_NAME):
                    try:
                        check_path(name)
                    except BilingualValueError as exc:
                        raise BundleRefused("path_not_allowed", exc.message_vi, exc.message_en) from None
                if name in contents:
                    raise BundleRefused("not_a_bundle", f"'{name}' có hai lần trong gói", f"'{name}' is twice in the bundle")
                body = tar.extractfile(member)
                contents[name] = body.read() if body is not None else b""
    except BundleRefused:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError, UnicodeError):
        raise BundleRefused("not_a_bundle", "nội dung gửi lên không phải tệp tar (không nén) của một gói firmware",
                            "the body is not an (uncompressed) tar of a firmware bundle") from None
    return contents
