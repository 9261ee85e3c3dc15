from __future__ import annotations

from collections import defaultdict

from simulators.scenario import FaultKind, Scenario


def test_random_scenario_is_seeded_bounded_and_never_overlaps() -> None:
    ids = [f"rx-{i:03d}" for i in range(200)]
    scenario = Scenario.random(ids, 600.0, seed=3, faults_per_receiver=(1, 4), max_clock_skew=300.0, skewed_fraction=0.2)
    assert scenario == Scenario.random(ids, 600.0, seed=3, faults_per_receiver=(1, 4), max_clock_skew=300.0, skewed_fraction=0.2)
    assert scenario != Scenario.random(ids, 600.0, seed=4, faults_per_receiver=(1, 4), max_clock_skew=300.0, skewed_fraction=0.2)

    per_receiver = defaultdict(list)
    for fault in scenario.faults:
        per_receiver[fault.receiver].append(fault)
        assert 0.0 <= fault.at and fault.at + fault.length <= 600.0 + 1e-6
        assert fault.length > 0
    assert set(per_receiver) == set(ids)
    for faults in per_receiver.values():
        assert 1 <= len(faults) <= 4
        faults.sort(key=lambda f: f.at)
        for first, second in zip(faults, faults[1:]):
            assert first.at + first.length <= second.at + 1e-6
    assert {f.kind for f in scenario.faults} == set(FaultKind)
    assert [f.at for f in scenario.faults] == sorted(f.at for f in scenario.faults)
    assert 10 <= len(scenario.clock_skew) <= 80
    assert all(abs(s) <= 300.0 for s in scenario.clock_skew.values())


def test_scenario_json_round_trip(tmp_path) -> None:
    scenario = Scenario.random(["a", "b", "c"], 60.0, seed=1, faults_per_receiver=(2, 2), kinds=[FaultKind.LINK_CUT], max_clock_skew=5, skewed_fraction=1.0)
    scenario.save(tmp_path / "s.json")
    assert Scenario.load(tmp_path / "s.json") == scenario
    assert all(f.kind is FaultKind.LINK_CUT for f in scenario.faults)
    assert len(scenario.faults) == 6
