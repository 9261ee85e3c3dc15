"""The firmware type-checks with pyright against the MicroPython ESP32 stubs (the real
MicroPython API, not CPython's). Needs pyright in $PYRIGHT (scripts/test sets it) or on PATH;
the stubs come from the micropython-esp32-stubs package installed in the environment, laid
out as `pip install --target typings` would."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.firmware.conftest import FIRMWARE

STUB_PACKAGES = ("micropython-esp32-stubs", "micropython-stdlib-stubs")


def _pyright() -> str | None:
    return os.environ.get("PYRIGHT") or shutil.which("pyright")


def _typings(target: Path) -> Path:
    for name in STUB_PACKAGES:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: scripts/bootstrap --tests installs it")
        for file in dist.files or []:
            if ".dist-info" in str(file) or "__pycache__" in str(file):
                continue
            source = Path(str(dist.locate_file(file)))
            dest = target / str(file)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    return target


def test_firmware_type_checks_against_the_micropython_stubs(tmp_path: Path) -> None:
    pyright = _pyright()
    if pyright is None:
        pytest.fail("pyright not found: scripts/bootstrap --tests installs it in .tools/ and scripts/test sets $PYRIGHT")
    work = tmp_path / "firmware"
    shutil.copytree(FIRMWARE, work, ignore=shutil.ignore_patterns("__pycache__", "typings"))
    _typings(work / "typings")
    result = subprocess.run([pyright, "-p", "pyrightconfig.json", "--outputjson"], cwd=work,
                            capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    problems = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
                for d in report["generalDiagnostics"] if d["severity"] in ("error", "warning")]
    assert not problems, "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] >= len(list(FIRMWARE.rglob("*.py")))
