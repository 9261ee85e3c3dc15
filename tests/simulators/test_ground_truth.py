from __future__ import annotations

import json

import pytest

from simulators.ground_truth import GroundTruth, Transition


def _truth(tmp_path=None) -> GroundTruth:
    truth = GroundTruth(tmp_path / "gt.jsonl" if tmp_path else None)
    truth.record("a", True, "connected", 100.0)
    truth.record("a", False, "link_cut", 130.0)
    truth.record("a", False, "ping_timeout", 131.0)  # already down: not a transition
    truth.record("a", True, "link_restored", 150.0)
    truth.record("a", False, "power_loss", 190.0)
    truth.record("a", True, "connected", 200.0)
    return truth


def test_only_transitions_are_recorded() -> None:
    truth = _truth()
    assert [(t.t, t.up, t.cause) for t in truth.transitions("a")] == [
        (100.0, True, "connected"), (130.0, False, "link_cut"), (150.0, True, "link_restored"),
        (190.0, False, "power_loss"), (200.0, True, "connected"),
    ]
    assert not truth.record("b", False, "link_cut", 1.0)  # down before anything: nothing to say
    assert list(truth.transitions("b")) == []
    assert truth.is_up("a") and not truth.is_up("b")


def test_intervals_partition_the_window() -> None:
    truth = _truth()
    assert truth.intervals("a", 0.0, 300.0) == [
        (0.0, 100.0, False), (100.0, 130.0, True), (130.0, 150.0, False),
        (150.0, 190.0, True), (190.0, 200.0, False), (200.0, 300.0, True),
    ]
    # A window starting inside an interval takes the state in force at its start.
    assert truth.intervals("a", 120.0, 160.0) == [(120.0, 130.0, True), (130.0, 150.0, False), (150.0, 160.0, True)]
    assert truth.intervals("a", 135.0, 140.0) == [(135.0, 140.0, False)]
    assert truth.intervals("a", 130.0, 150.0) == [(130.0, 150.0, False)]
    assert truth.intervals("unknown", 0.0, 10.0) == [(0.0, 10.0, False)]
    with pytest.raises(ValueError):
        truth.intervals("a", 10.0, 0.0)


def test_availability() -> None:
    truth = _truth()
    assert truth.availability("a", 100.0, 200.0) == pytest.approx((30 + 40) / 100)
    assert truth.availability("a", 0.0, 300.0) == pytest.approx((30 + 40 + 100) / 300)
    assert truth.availability("a", 200.0, 250.0) == 1.0
    assert truth.availability("a", 130.0, 150.0) == 0.0
    assert truth.availability("a", 5.0, 5.0) == 0.0


def test_json_lines_round_trip(tmp_path) -> None:
    truth = _truth(tmp_path)
    truth.record("b", True, "connected", 120.5)
    truth.close()
    lines = (tmp_path / "gt.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"receiver": "a", "t": 100.0, "state": "up", "cause": "connected"}
    assert json.loads(lines[1]) == {"receiver": "a", "t": 130.0, "state": "down", "cause": "link_cut"}
    assert len(lines) == 6
    loaded = GroundTruth.load(tmp_path / "gt.jsonl")
    assert loaded.receivers == ["a", "b"]
    assert list(loaded.transitions("a")) == list(_truth().transitions("a"))
    assert loaded.availability("b", 100.5, 140.5) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Transition.from_json('{"receiver": "a", "t": 1, "state": "sideways", "cause": "x"}')
