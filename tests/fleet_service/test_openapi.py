"""The whole OpenAPI under schemathesis (tests/fleet_service/openapi_fuzz.py), run by a pytest
of its own.

schemathesis builds its cases for every operation while the module is collected (about 5 s of
CPU), and every parallel worker collects the whole suite: run here, they are built once. The
GETs and the other operations run in two such processes, side by side."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.loa_process import REPO_ROOT

# openapi_fuzz.METHODS_ENV, not imported: importing that module builds every case.
METHODS_ENV = "LOA_OPENAPI_FUZZ_METHODS"

FUZZ = REPO_ROOT / "tests" / "fleet_service" / "openapi_fuzz.py"


@pytest.mark.parametrize("methods", ["GET", "POST,PUT,PATCH,DELETE"])
def test_no_operation_answers_a_server_error_and_every_refusal_has_the_bilingual_shape(methods: str) -> None:
    run = subprocess.run([sys.executable, "-m", "pytest", str(FUZZ), "-q", "-p", "no:xdist", "-p", "no:cacheprovider"],
                         cwd=REPO_ROOT, env={**os.environ, METHODS_ENV: methods}, capture_output=True, text=True,
                         timeout=280)
    assert run.returncode == 0, run.stdout[-30_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout.splitlines()[-1], run.stdout[-2_000:]
