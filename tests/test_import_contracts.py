"""The packages' edges (pyproject.toml, [tool.importlinter]) hold, and breaking one fails."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "pyproject.toml"
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("fleet_service", "broker", "simulators", "dashboards")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports finds the packages from its working directory (it puts it first on sys.path).
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", str(CONFIG)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_packages_keep_their_contracts() -> None:
    result = lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


# One import per contract that the contract must refuse: (module, the import added, contract).
VIOLATIONS = [
    ("fleet_service/protocol/topics.py", "import fleet_service.registry.service", "The protocol is a leaf"),
    ("fleet_service/cli.py", "import simulators.demo", "The service does not import the simulator"),
    ("fleet_service/runtime.py", "import broker.embedded", "The service imports a broker adapter only"),
    ("broker/embedded.py", "import fleet_service.registry.service", "The broker adapters know only"),
    ("fleet_service/broker_port.py", "import fleet_service.config", "The port the brokers implement is a leaf"),
    ("fleet_service/ingest/service.py", "import fleet_service.mqtt.adapter", "Domain packages do not import the MQTT"),
    ("fleet_service/cli_support.py", "import fleet_service.runtime", "The CLI helpers are a leaf"),
]


@pytest.mark.parametrize(("module", "line", "contract"), VIOLATIONS, ids=[v[2] for v in VIOLATIONS])
def test_an_import_across_an_edge_breaks_its_contract(tmp_path: Path, module: str, line: str, contract: str) -> None:
    """The same contracts, on a copy of the packages with one import they forbid."""
    for package in PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / module).open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    assert "1 broken" in result.stdout, result.stdout
