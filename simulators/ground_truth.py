"""What really happened: when each virtual receiver was connected to the broker.

The simulator knows the truth the fleet service can only infer, so the uptime ledger can be
checked against it. A receiver is **up** from the moment its CONNACK (accepted) has arrived
and its birth has been written to the connection, and **down** from the exact moment a fault
begins (link cut, power loss, clean shutdown) or its connection is otherwise lost (closed by
the broker, reset, ping or acknowledgement timeout). A link cut that the MQTT session
survives is down from the cut to the restore, and up again from the restore (recorded once
the broker has answered a ping, with the time of the restore). Such a flap can be shorter
than any detection latency: the service is not expected to see it.

Times are wall-clock Unix seconds (``time.time()``), never the receiver's own (possibly
skewed) clock. Only transitions are recorded; before its first record a receiver is down.

The JSON-lines file has one object per transition::

    {"receiver": "rx-0001", "t": 1767225600.123456, "state": "up", "cause": "connected"}

Lines are written in the order the transitions are known, which per receiver is time order;
across receivers a restore's ``up`` may be written a round trip after its time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Causes of "up".
CONNECTED = "connected"          # CONNACK accepted and birth written
LINK_RESTORED = "link_restored"  # the link came back and the MQTT session had survived
# Causes of "down".
LINK_CUT = "link_cut"
POWER_LOSS = "power_loss"
SHUTDOWN = "shutdown"            # clean shutdown (reboot or end of the simulation)
STOPPED = "stopped"              # the simulation was stopped without a clean shutdown
# Any other cause of "down" names how the connection was lost: connection_closed,
# connection_reset, ping_timeout, ack_timeout, protocol_error.


@dataclass(frozen=True, slots=True)
class Transition:
    receiver: str
    t: float
    up: bool
    cause: str

    def to_json(self) -> str:
        return json.dumps(
            {"receiver": self.receiver, "t": self.t, "state": "up" if self.up else "down", "cause": self.cause},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, line: str) -> Transition:
        obj = json.loads(line)
        state = obj["state"]
        if state not in ("up", "down"):
            raise ValueError(f"state must be 'up' or 'down', not {state!r}")
        return cls(str(obj["receiver"]), float(obj["t"]), state == "up", str(obj["cause"]))


class GroundTruth:
    """Transitions per receiver, in memory and optionally appended to a JSON-lines file."""

    def __init__(self, path: Path | str | None = None) -> None:
        self._log: dict[str, list[tuple[float, bool, str]]] = {}
        self._file: IO[str] | None = open(path, "a", encoding="utf-8", buffering=1 << 16) if path else None  # noqa: SIM115
        self.path = Path(path) if path else None

    # -- recording --------------------------------------------------------------------------

    def record(self, receiver: str, up: bool, cause: str, t: float) -> bool:
        """Record a transition; returns False (and records nothing) if the receiver is already
        in that state."""
        entries = self._log.get(receiver)
        if entries is None:
            if not up:
                return False  # down before anything happened: nothing changes
            entries = self._log[receiver] = []
        elif entries[-1][1] == up:
            return False
        entries.append((t, up, cause))
        if self._file is not None:
            self._file.write(Transition(receiver, t, up, cause).to_json() + "\n")
        return True

    def is_up(self, receiver: str) -> bool:
        entries = self._log.get(receiver)
        return bool(entries) and entries[-1][1]

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- reading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str) -> GroundTruth:
        """Read a JSON-lines file written by a simulation (for analysis after the run)."""
        truth = cls()
        rows: list[Transition] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rows.append(Transition.from_json(line))
        rows.sort(key=lambda r: r.t)
        for row in rows:
            truth.record(row.receiver, row.up, row.cause, row.t)
        return truth

    @property
    def receivers(self) -> list[str]:
        return sorted(self._log)

    def transitions(self, receiver: str | None = None) -> Iterator[Transition]:
        names: Iterable[str] = [receiver] if receiver is not None else sorted(self._log)
        for name in names:
            for t, up, cause in self._log.get(name, ()):
                yield Transition(name, t, up, cause)

    def intervals(self, receiver: str, start: float, end: float) -> list[tuple[float, float, bool]]:
        """``[start, end)`` cut into consecutive ``(from, to, up)`` intervals, adjacent ones with
        the same state merged and empty ones left out."""
        if end < start:
            raise ValueError("end is before start")
        up = False
        out: list[tuple[float, float, bool]] = []
        since = start
        for t, is_up, _cause in self._log.get(receiver, ()):
            if t <= start:
                up = is_up
                continue
            if t >= end:
                break
            if is_up != up:
                if t > since:
                    out.append((since, t, up))
                since = t
                up = is_up
        if end > since:
            out.append((since, end, up))
        merged: list[tuple[float, float, bool]] = []
        for interval in out:
            if merged and merged[-1][2] == interval[2] and merged[-1][1] == interval[0]:
                merged[-1] = (merged[-1][0], interval[1], interval[2])
            else:
                merged.append(interval)
        return merged

    def availability(self, receiver: str, start: float, end: float) -> float:
        """Fraction of ``[start, end)`` the receiver was up (0.0 for an empty window)."""
        if end <= start:
            return 0.0
        up = sum(b - a for a, b, is_up in self.intervals(receiver, start, end) if is_up)
        return up / (end - start)
