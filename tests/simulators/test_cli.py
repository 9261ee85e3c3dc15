"""``loa simulate`` end to end: a scenario against a real broker, ground truth on disk."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from simulators.cli import simulate_app
from simulators.ground_truth import GroundTruth
from simulators.scenario import FaultKind, Scenario
from tests.simulators.helpers import credentials
from tests.support.mosquitto import mosquitto

FAST_OPTIONS = [
    "--keepalive", "1", "--telemetry-interval", "0.5", "--connect-timeout", "1",
    "--backoff-base", "0.1", "--backoff-cap", "0.5", "--attach-delay", "0.1",
]


def test_run_writes_ground_truth_scenario_and_sessions(make_broker, tmp_path: Path) -> None:
    creds = credentials(5)
    broker = make_broker(creds)
    (tmp_path / "creds.json").write_text(json.dumps(creds))
    args = [
        "run", str(tmp_path / "creds.json"), "--host", broker.host, "--port", str(broker.port),
        "--ground-truth", str(tmp_path / "gt.jsonl"), "--sessions-file", str(tmp_path / "sessions.json"),
        *FAST_OPTIONS,
    ]
    runner = CliRunner()
    result = runner.invoke(
        simulate_app,
        [*args, "--duration", "4", "--faults-min", "1", "--faults-max", "1",
         "--kind", "link_cut", "--kind", "clean_reboot", "--seed", "5", "--save-scenario", str(tmp_path / "s.json")],
    )
    assert result.exit_code == 0, result.output
    assert "5 receivers" in result.output and "availability: mean" in result.output

    scenario = Scenario.load(tmp_path / "s.json")
    assert len(scenario.faults) == 5
    assert {f.kind for f in scenario.faults} <= {FaultKind.LINK_CUT, FaultKind.CLEAN_REBOOT}
    truth = GroundTruth.load(tmp_path / "gt.jsonl")
    assert truth.receivers == sorted(creds)
    faults = {f.receiver: f for f in scenario.faults}
    for rid in creds:
        moves = list(truth.transitions(rid))
        assert moves[0].up and moves[0].cause == "connected"
        assert not moves[-1].up  # everyone is down once the run is over
        # Each receiver's one fault is in its ground truth (whether it was back before the
        # run stopped depends on where the fault fell).
        expected = "link_cut" if faults[rid].kind is FaultKind.LINK_CUT else "shutdown"
        assert moves[1].cause == expected
    sessions = json.loads((tmp_path / "sessions.json").read_text())
    assert set(sessions) == set(creds) and all(n >= 1 for n in sessions.values())

    # A second run continues the session counters where the first left them.
    result = runner.invoke(simulate_app, [*args, "--duration", "1", "--faults-max", "0", "--receivers", "2"])
    assert result.exit_code == 0, result.output
    after = json.loads((tmp_path / "sessions.json").read_text())
    assert after == {rid: n + 1 for rid, n in sessions.items() if rid in after}
    assert len(after) == 2


def test_credentials_file_errors_are_clear(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    result = CliRunner().invoke(simulate_app, ["run", str(tmp_path / "bad.json"), "--duration", "1"])
    assert result.exit_code != 0
    assert "must hold a JSON object" in " ".join(result.output.replace("│", " ").split())


def test_memory_per_receiver_is_a_few_kilobytes(tmp_path: Path) -> None:
    with mosquitto(tmp_path / "anon", "allow_anonymous true\n") as server:
        result = CliRunner().invoke(
            simulate_app, ["memory", "--host", server.host, "--port", str(server.port), "--receivers", "300", "--settle", "2"]
        )
    assert result.exit_code == 0, result.output
    per_receiver = float(re.search(r"\((\d+) bytes per receiver", result.output).group(1))
    assert per_receiver < 8 * 1024, result.output


def test_loa_finds_simulate_and_demo_through_entry_points() -> None:
    """The service does not import the simulator: ``loa simulate`` and ``loa demo`` exist only
    because the installed package declares them (pyproject.toml, ``loa.commands``)."""
    from fleet_service.cli import app

    for command, expected in (("simulate", "fault injection"), ("demo", "Đại Từ")):
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert expected in result.output, result.output
