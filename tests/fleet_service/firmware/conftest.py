"""A release bundle built once from the repository's firmware/ and signing keys, shared by the
firmware release tests; each test signs or alters its own copy."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet_service.firmware import bundle, keys
from fleet_service.firmware.cli import FIRMWARE_SOURCE

HARDWARE = "esp32-a7670"
VERSION = "1.4.0"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str
    base64: str


def firmware_source(directory: Path, version: str = VERSION) -> Path:
    """A copy of the repository's firmware/loa that says it is ``version``."""
    shutil.copytree(FIRMWARE_SOURCE / "loa", directory / "loa", ignore=shutil.ignore_patterns("__pycache__"))
    init = directory / "loa" / "__init__.py"
    text, count = re.subn(r'^VERSION = "[^"]*"$', f'VERSION = "{version}"', init.read_text(), flags=re.MULTILINE)
    assert count == 1, "firmware/loa/__init__.py no longer states VERSION"
    init.write_text(text)
    return directory


@pytest.fixture(scope="session")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The firmware's sources, as version 1.4.0."""
    return firmware_source(tmp_path_factory.mktemp("source"))


@pytest.fixture(scope="session")
def built_bundle(tmp_path_factory: pytest.TempPathFactory, source: Path) -> Path:
    """An unsigned bundle of version 1.4.0 (installs over 1.0.0+); copy it before changing it."""
    out = tmp_path_factory.mktemp("built") / "bundle"
    bundle.build(source, out, hardware=HARDWARE, min_version="1.0.0")
    return out


@pytest.fixture(scope="session")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """Three key pairs: "current" and "next" (both trusted while the key is replaced) and
    "stranger" (trusted by nobody)."""
    directory = tmp_path_factory.mktemp("keys")
    pairs = {}
    for name in ("current", "next", "stranger"):
        private, public, key = keys.generate(directory / name)
        pairs[name] = KeyPair(private, public, keys.key_id(key), keys.public_base64(key))
    return pairs


@pytest.fixture
def bundle_copy(built_bundle: Path, tmp_path: Path) -> Callable[..., Path]:
    """A copy of the built bundle, signed with ``key`` unless None."""
    made = 0

    def copy(key: KeyPair | None = None) -> Path:
        nonlocal made
        made += 1
        target = tmp_path / f"bundle-{made}"
        shutil.copytree(built_bundle, target)
        if key is not None:
            bundle.sign(target, key.private)
        return target

    return copy


def set_manifest(bundle_dir: Path, **changes: object) -> None:
    """Rewrite the bundle's manifest (canonically) with ``changes``; its signature is then stale."""
    manifest, _ = bundle.read_manifest(bundle_dir)
    value = {**manifest.model_dump(mode="json"), **changes}
    (bundle_dir / bundle.MANIFEST_NAME).write_bytes(bundle.canonical_json(value))


def release_of(bundle_dir: Path, key: KeyPair, **changes: object) -> Path:
    """The bundle as another release (e.g. version="1.5.0"), signed with ``key``."""
    set_manifest(bundle_dir, **changes)
    bundle.sign(bundle_dir, key.private)
    return bundle_dir
