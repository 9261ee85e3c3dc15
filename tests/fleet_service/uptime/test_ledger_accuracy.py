"""The uptime ledger against the truth: a simulated fleet with injected faults (link cuts, power
losses, flapping links, clean reboots, skewed clocks) runs for a few minutes against
production Mosquitto and the service. For every receiver, the ledger's availability must match
the simulator's ground truth within 0.01 percentage points once each outage is allowed the
documented detection latency (docs/uptime.md): a silent failure may be seen up to
``1.5 x keepalive + broker check delay`` late, and an outage shorter than that may not be seen
at all; everything else (births, goodbyes, abrupt closes) is seen within milliseconds."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from fleet_service.db import session_scope
from fleet_service.uptime.models import Connectivity
from fleet_service.uptime.repository import LedgerRepository
from simulators.fleet import Fleet
from simulators.scenario import FaultKind, Scenario
from tests.support.fleet import provision_fleet
from tests.support.mosquitto_production import production_mosquitto
from tests.support.service import mosquitto_settings, running_service

pytestmark = pytest.mark.slow

KEEPALIVE_S = 2
# docs/uptime.md: the Will follows the receiver's last packet by 1.5 x keepalive, and
# Mosquitto 2.0 checks keepalives once every 6 s, in whole seconds: up to 7 s more.
DETECTION_LATENCY_MAX_S = 1.5 * KEEPALIVE_S + 7.0
TOLERANCE_PP = 0.01
RECEIVERS = 12
SCENARIO_S = 150.0
LENGTHS = {
    FaultKind.LINK_CUT: (8.0, 20.0),
    FaultKind.POWER_LOSS: (8.0, 20.0),
    FaultKind.FLAP: (10.0, 25.0),
    FaultKind.CLEAN_REBOOT: (2.0, 5.0),
}


@dataclass
class Comparison:
    receiver: str
    truth_down: float
    ledger_down: float
    allowance: float
    truth_outages: int
    ledger_outages: int
    window: float

    @property
    def error_pp(self) -> float:
        """How far the ledger's availability is outside what detection latency explains."""
        shortfall = (self.truth_down - self.allowance) - self.ledger_down  # missed beyond latency
        excess = self.ledger_down - self.truth_down  # downtime that never happened
        return max(shortfall, excess, 0.0) / self.window * 100


def outages(intervals: list[tuple[float, float, bool]]) -> list[tuple[float, float]]:
    return [(a, b) for a, b, up in intervals if not up]


def ledger_intervals(runtime, rid: str, start: float, end: float) -> list[tuple[float, float, bool]]:
    lo, hi = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
    with session_scope(runtime.sessions) as session:
        spans = LedgerRepository(session).spans_of_receiver(rid, lo, hi)
    out = []
    for span in spans:
        a = max(span.start, lo).timestamp()
        b = min(span.end or hi, hi).timestamp()
        if b > a:
            out.append((a, b, span.state is Connectivity.ONLINE))
    return out


async def test_ledger_matches_ground_truth_under_faults(tmp_path, sqlite_url):
    with production_mosquitto(tmp_path / "mq") as broker:
        settings = mosquitto_settings(sqlite_url, broker, inactivity_timeout_s=60, startup_grace_s=1)
        async with running_service(settings) as runtime:
            fleet_inventory = provision_fleet(runtime.sessions, receivers=RECEIVERS)
            for rid, password in fleet_inventory.credentials.items():
                await asyncio.to_thread(runtime.broker_accounts.add_receiver, rid, password)
            receivers = sorted(fleet_inventory.credentials)
            scenario = Scenario.random(receivers, SCENARIO_S, seed=20231, faults_per_receiver=(1, 3),
                                       lengths=LENGTHS, max_clock_skew=900, skewed_fraction=0.3)
            fleet = Fleet(broker.host, broker.port, fleet_inventory.credentials, keepalive=KEEPALIVE_S,
                          telemetry_interval=2.0, attach_delay=(0.1, 0.5), backoff_base=0.5, backoff_cap=2.0,
                          ground_truth=tmp_path / "truth.jsonl", seed=7)
            await fleet.start()
            try:
                await fleet.wait_up(timeout=30)
                await asyncio.sleep(1)  # every birth in the ledger
                start = time.time()
                await fleet.run_scenario(scenario)
                await fleet.wait_up(timeout=60)
                await asyncio.sleep(1)
                end = time.time()
                await runtime.ingest.flush()
            finally:
                await fleet.stop()
            truth = fleet.ground_truth
            comparisons = []
            for rid in receivers:
                true_intervals = truth.intervals(rid, start, end)
                ledger = ledger_intervals(runtime, rid, start, end)
                true_outages = outages(true_intervals)
                ledger_outages = outages(ledger)
                comparisons.append(Comparison(
                    rid,
                    truth_down=sum(b - a for a, b in true_outages),
                    ledger_down=sum(b - a for a, b in ledger_outages),
                    allowance=sum(min(b - a, DETECTION_LATENCY_MAX_S) for a, b in true_outages),
                    truth_outages=len(true_outages), ledger_outages=len(ledger_outages), window=end - start))
                # Every outage in the ledger lies over a real one: the ledger invents nothing.
                for a, b in ledger_outages:
                    assert any(ta <= b and a <= tb for ta, tb in true_outages), (rid, a, b, true_outages)
                # Every real outage longer than the detection latency is in the ledger.
                for ta, tb in true_outages:
                    if tb - ta > DETECTION_LATENCY_MAX_S + 0.5:
                        assert any(ta <= b and a <= tb for a, b in ledger_outages), (rid, ta, tb, ledger_outages)

    report = "\n".join(
        f"{c.receiver}: truth down {c.truth_down:7.3f}s in {c.truth_outages}, ledger {c.ledger_down:7.3f}s in "
        f"{c.ledger_outages}, allowance {c.allowance:6.3f}s, error {c.error_pp:.4f} pp" for c in comparisons)
    print(report)
    assert sum(c.truth_outages for c in comparisons) >= RECEIVERS, "the scenario injected too few faults"
    worst = max(comparisons, key=lambda c: c.error_pp)
    assert worst.error_pp <= TOLERANCE_PP, report
