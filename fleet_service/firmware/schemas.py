"""The release bundle's two files (manifest.json, manifest.sig) and what the firmware API
takes and gives.

A version is MAJOR.MINOR.PATCH, each a number of at most four digits without leading zeros
(receivers compare them as numbers). A hardware family is lower-case words joined by '-'
("esp32-a7670"). A file's path lies under ``loa/`` (the application package, installed into a
slot), made of plain names: no '..', no '.', no absolute path, no backslash, no two paths that
differ only in case (a FAT filesystem would take them for one)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_service.errors import BilingualValueError
from fleet_service.firmware.keys import KEY_ID_HEX

FORMAT = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
PACKAGE = "loa"
# The module main.py looks for in a slot (firmware/main.py, _has_app).
ENTRY_MODULE = f"{PACKAGE}/app.mpy"
# Two slots must fit the board's filesystem beside its config and state: 512 KiB for one
# application is ten times today's (about 48 KiB compiled).
MAX_TOTAL_LENGTH = 512 * 1024
# A receiver holds the whole manifest in its heap while it checks the signature
# (firmware/loa/signature.py was measured with a 4 KB one): about 120 bytes a file, today's 22
# files take under 3 KB.
MAX_FILES = 64
MAX_MANIFEST_BYTES = 8 * 1024
MAX_PATH = 200
MAX_SIGNATURE_FILE_BYTES = 1024

VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]{0,3})$")
VERSION_MAX = 16
HARDWARE_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
HARDWARE_MAX = 40
MPY_VERSION_RE = re.compile(r"^[0-9]{1,3}\.[0-9]{1,3}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def parse_version(text: str) -> tuple[int, int, int]:
    match = VERSION_RE.match(text)
    if match is None:
        raise BilingualValueError(
            f"phiên bản '{text[:40]}' không đúng dạng MAJOR.MINOR.PATCH (số, tối đa 4 chữ số, không có số 0 ở đầu)",
            f"version '{text[:40]}' is not MAJOR.MINOR.PATCH (numbers of at most 4 digits, no leading zeros)")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def version_order(text: str) -> int:
    """One integer that orders versions as receivers compare them."""
    major, minor, patch = parse_version(text)
    return (major * 10_000 + minor) * 10_000 + patch


def check_hardware(text: str) -> str:
    if len(text) > HARDWARE_MAX or not HARDWARE_RE.match(text):
        raise BilingualValueError(
            f"dòng phần cứng '{text[:60]}' không hợp lệ: chữ thường và số, nối bằng '-' (ví dụ esp32-a7670), "
            f"tối đa {HARDWARE_MAX} ký tự",
            f"hardware family '{text[:60]}' is not valid: lower-case letters and digits joined by '-' "
            f"(e.g. esp32-a7670), at most {HARDWARE_MAX} characters")
    return text


def check_path(path: str) -> str:
    """A file's place in the slot, refused unless it is a plain relative path under loa/."""
    parts = path.split("/")
    if (len(path) > MAX_PATH or parts[0] != PACKAGE or len(parts) < 2
            or not all(_NAME.match(part) for part in parts) or not path.endswith(".mpy")):
        raise BilingualValueError(
            f"đường dẫn '{path[:MAX_PATH]}' không được phép: phải là tệp .mpy trong {PACKAGE}/, chỉ gồm tên thường "
            f"(không '..', không '/' ở đầu, không '\\')",
            f"path '{path[:MAX_PATH]}' is not allowed: it must be a .mpy file under {PACKAGE}/, made of plain names "
            f"(no '..', no leading '/', no '\\')")
    return path


class ManifestFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    path: str
    length: int = Field(ge=0, le=MAX_TOTAL_LENGTH)
    sha256: str = Field(pattern=SHA256_RE.pattern)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return check_path(value)


class Manifest(BaseModel):
    """manifest.json. Its exact bytes are what is signed; it is written in canonical JSON
    (sorted keys, no whitespace, UTF-8), files sorted by path."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # An int, not Literal[1]: a Literal lets JSON's true pass for 1.
    format: int
    version: str = Field(max_length=VERSION_MAX)
    hardware: str
    # The oldest version this one may be installed over (a receiver on an older one needs an
    # intermediate release first).
    min_version: str = Field(max_length=VERSION_MAX)
    # The .mpy format the modules are compiled to ("6.3"); a receiver loads the same major.
    mpy_version: str = Field(pattern=MPY_VERSION_RE.pattern)
    files: list[ManifestFile] = Field(min_length=1, max_length=MAX_FILES)
    total_length: int = Field(ge=0, le=MAX_TOTAL_LENGTH)

    @field_validator("format")
    @classmethod
    def _format(cls, value: int) -> int:
        if value != FORMAT:
            raise BilingualValueError(f"format {value} không được hỗ trợ (chỉ {FORMAT})",
                                      f"format {value} is not supported (only {FORMAT})")
        return value

    @field_validator("version", "min_version")
    @classmethod
    def _version(cls, value: str) -> str:
        parse_version(value)
        return value

    @field_validator("hardware")
    @classmethod
    def _hardware(cls, value: str) -> str:
        return check_hardware(value)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if parse_version(self.min_version) > parse_version(self.version):
            raise BilingualValueError(f"min_version {self.min_version} cao hơn version {self.version}",
                                      f"min_version {self.min_version} is above version {self.version}")
        paths = [f.path for f in self.files]
        if paths != sorted(paths):
            raise BilingualValueError("các tệp phải được xếp theo đường dẫn", "files must be sorted by path")
        folded = [p.lower() for p in paths]
        if len(set(folded)) != len(folded):
            raise BilingualValueError("có hai tệp cùng đường dẫn (không phân biệt hoa thường)",
                                      "two files have the same path (ignoring case)")
        directories = {"/".join(p.split("/")[:i]) for p in folded for i in range(1, p.count("/") + 1)}
        clash = next((p for p in folded if p in directories), None)
        if clash is not None:
            raise BilingualValueError(f"'{clash}' vừa là tệp vừa là thư mục", f"'{clash}' is both a file and a directory")
        if ENTRY_MODULE not in paths:
            raise BilingualValueError(f"thiếu {ENTRY_MODULE}: gói không có ứng dụng",
                                      f"{ENTRY_MODULE} is missing: the bundle has no application")
        total = sum(f.length for f in self.files)
        if total != self.total_length:
            raise BilingualValueError(f"total_length {self.total_length} khác tổng độ dài các tệp ({total})",
                                      f"total_length {self.total_length} is not the files' total length ({total})")
        return self


class SignatureFile(BaseModel):
    """manifest.sig: the Ed25519 signature of manifest.json's exact bytes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    algorithm: Literal["ed25519"]
    key_id: str = Field(pattern=f"^[0-9a-f]{{{KEY_ID_HEX}}}$")
    # 64 bytes in base64.
    signature: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$")


# --- the API ----------------------------------------------------------------------------------

class ReleaseFileOut(BaseModel):
    path: str
    length: int
    sha256: str


class ReleaseOut(BaseModel):
    id: int
    version: str
    hardware: str
    min_version: str
    mpy_version: str
    files: int = Field(description="how many files the bundle has")
    total_length: int = Field(description="bytes of all its files")
    key_id: str = Field(description="the trusted key that signed it")
    manifest_sha256: str = Field(description="SHA-256 of manifest.json's exact bytes")
    uploaded_by: str
    uploaded_at: datetime
    withdrawn: bool
    withdrawn_at: datetime | None
    withdrawn_by: str | None
    withdraw_reason: str | None


class ReleaseDetailOut(ReleaseOut):
    file_list: list[ReleaseFileOut]


class WithdrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=500, description="why it must not be installed any more")
