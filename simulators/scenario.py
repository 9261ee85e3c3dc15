"""Fault scenarios: which receiver suffers what, when, and for how long.

A scenario is plain data (JSON round-trip), so a run can be repeated exactly: the same seed
gives the same faults at the same offsets from the scenario's start.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from simulators.update import UpdateFaults


class FaultKind(StrEnum):
    LINK_CUT = "link_cut"          # the 4G link goes silent for `length` seconds
    POWER_LOSS = "power_loss"      # power off for `length` seconds, then boot (power_on)
    FLAP = "flap"                  # short cuts at random intervals during `length` seconds
    CLEAN_REBOOT = "clean_reboot"  # shutdown + DISCONNECT, off `length` seconds, boot (soft)
    # Board faults: a reading past its threshold for `length` seconds, then normal again (the
    # board events low_supply, overheat, amp_fault / amp_recovered; the link is untouched).
    LOW_SUPPLY = "low_supply"      # the 12 V input sags to 10.5 V (a flat battery)
    OVERHEAT = "overheat"          # the chip's die at 90 C
    AMP_FAULT = "amp_fault"        # the amplifier draws no current when switched on


# Default length ranges in seconds, per kind: what a 4G receiver in a commune actually sees.
DEFAULT_LENGTHS: Mapping[FaultKind, tuple[float, float]] = {
    FaultKind.LINK_CUT: (5.0, 120.0),
    FaultKind.POWER_LOSS: (10.0, 300.0),
    FaultKind.FLAP: (30.0, 180.0),
    FaultKind.CLEAN_REBOOT: (2.0, 20.0),
    FaultKind.LOW_SUPPLY: (60.0, 600.0),
    FaultKind.OVERHEAT: (60.0, 600.0),
    FaultKind.AMP_FAULT: (30.0, 600.0),
}


@dataclass(frozen=True, slots=True)
class Fault:
    receiver: str
    kind: FaultKind
    at: float      # seconds after the scenario starts
    length: float  # seconds (cut, time off, flapping period)

    def to_dict(self) -> dict[str, object]:
        return {"receiver": self.receiver, "kind": self.kind.value, "at": self.at, "length": self.length}


@dataclass(frozen=True)
class Scenario:
    duration: float
    faults: tuple[Fault, ...] = ()
    clock_skew: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None
    # Receivers whose clock never syncs (they check no expiry and run no schedule).
    unsynced: frozenset[str] = frozenset()
    # Faults in each named receiver's next firmware update, set when the scenario starts.
    update_faults: Mapping[str, UpdateFaults] = field(default_factory=dict)

    @classmethod
    def random(
        cls,
        receivers: Sequence[str],
        duration: float,
        *,
        seed: int,
        faults_per_receiver: tuple[int, int] = (0, 3),
        kinds: Sequence[FaultKind] | None = None,
        lengths: Mapping[FaultKind, tuple[float, float]] = DEFAULT_LENGTHS,
        max_clock_skew: float = 0.0,
        skewed_fraction: float = 0.1,
        unsynced_fraction: float = 0.0,
    ) -> Scenario:
        """Each receiver gets ``faults_per_receiver`` (inclusive range) faults of random
        ``kinds`` (by default, every kind ``lengths`` gives a length for). The duration is split into as many equal slots as the receiver has faults
        and each fault lies wholly inside its slot, so a receiver's faults never overlap. A
        ``skewed_fraction`` of receivers get a clock offset uniform in ±``max_clock_skew``; an
        ``unsynced_fraction`` never sync their clock."""
        if duration <= 0:
            raise ValueError("duration must be > 0")
        lo, hi = faults_per_receiver
        if not 0 <= lo <= hi:
            raise ValueError("faults_per_receiver must be (low, high) with 0 <= low <= high")
        if kinds is None:
            kinds = tuple(lengths)
        if not kinds and hi:
            raise ValueError("no fault kinds to choose from")
        rng = random.Random(seed)
        faults: list[Fault] = []
        skew: dict[str, float] = {}
        unsynced: set[str] = set()
        for receiver in receivers:
            count = rng.randint(lo, hi)
            slot = duration / count if count else duration
            for i in range(count):
                kind = rng.choice(list(kinds))
                shortest, longest = lengths[kind]
                length = min(rng.uniform(shortest, longest), slot * 0.8)
                at = i * slot + rng.uniform(0.0, slot - length)
                faults.append(Fault(receiver, kind, round(at, 3), round(length, 3)))
            if max_clock_skew and rng.random() < skewed_fraction:
                skew[receiver] = round(rng.uniform(-max_clock_skew, max_clock_skew), 3)
            if unsynced_fraction and rng.random() < unsynced_fraction:
                unsynced.add(receiver)
        faults.sort(key=lambda f: (f.at, f.receiver))
        return cls(duration, tuple(faults), skew, seed, frozenset(unsynced))

    def to_json(self) -> str:
        return json.dumps(
            {
                "duration": self.duration,
                "seed": self.seed,
                "clock_skew": dict(self.clock_skew),
                "unsynced": sorted(self.unsynced),
                "faults": [f.to_dict() for f in self.faults],
                "update_faults": {rid: f.to_dict() for rid, f in sorted(self.update_faults.items())},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        obj = json.loads(text)
        faults = tuple(
            Fault(str(f["receiver"]), FaultKind(f["kind"]), float(f["at"]), float(f["length"])) for f in obj["faults"]
        )
        skew = {str(k): float(v) for k, v in (obj.get("clock_skew") or {}).items()}
        unsynced = frozenset(str(rid) for rid in obj.get("unsynced") or ())
        updates = {str(rid): UpdateFaults.from_dict(f) for rid, f in (obj.get("update_faults") or {}).items()}
        return cls(float(obj["duration"]), tuple(sorted(faults, key=lambda f: f.at)), skew, obj.get("seed"), unsynced,
                   updates)

    @classmethod
    def load(cls, path: Path | str) -> Scenario:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: Path | str) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")
