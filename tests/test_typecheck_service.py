"""The service, its broker adapters and the simulator type-check with pyright (basic mode;
[tool.pyright] in pyproject.toml) against the packages installed in this environment. Needs
pyright in $PYRIGHT (scripts/test sets it) or on PATH, as tests/firmware/test_typecheck.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_the_service_type_checks() -> None:
    pyright = os.environ.get("PYRIGHT") or shutil.which("pyright")
    if pyright is None:
        pytest.fail("pyright not found: scripts/bootstrap --tests installs it in .tools/ and scripts/test sets $PYRIGHT")
    # --pythonpath: this interpreter's packages (the test's virtualenv), whatever is on PATH.
    result = subprocess.run([pyright, "--project", str(REPO_ROOT), "--pythonpath", sys.executable, "--outputjson"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    problems = [f"{Path(d['file']).relative_to(REPO_ROOT)}:{d['range']['start']['line'] + 1}: {d['message']}"
                for d in report["generalDiagnostics"] if d["severity"] in ("error", "warning")]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    sources = [p for package in ("fleet_service", "broker", "simulators") for p in (REPO_ROOT / package).rglob("*.py")]
    assert report["summary"]["filesAnalyzed"] >= len(sources)
