"""What really happened: when each virtual receiver was connected to the broker, and what it
really played.

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

Playback is recorded in the same file, one line when a stream starts playing (its first audio
arrived) and one when it stops::

    {"receiver": "rx-0001", "t": 1767225700.5, "play": "start", "src": "cmd", "ref": "c17", "pri": "normal"}
    {"receiver": "rx-0001", "t": 1767225760.0, "play": "end", "why": "stopped"}

``why`` is a play_stopped reason (``ended``, ``stopped``, ``preempted``, ``stream_error``) or
``power_loss``/``shutdown`` when the receiver went off while playing.
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


@dataclass(frozen=True, slots=True)
class Played:
    """One stretch of playback: a command (``source`` "cmd") or a schedule slot ("sched")."""

    receiver: str
    source: str
    ref: str
    priority: str
    start: float
    end: float | None = None   # None: still playing
    why: str | None = None     # why it stopped


class GroundTruth:
    """Transitions and playback per receiver, in memory and optionally appended to a JSON-lines
    file."""

    def __init__(self, path: Path | str | None = None) -> None:
        self._log: dict[str, list[tuple[float, bool, str]]] = {}
        self._plays: dict[str, list[Played]] = {}
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

    def play_started(self, receiver: str, source: str, ref: str, priority: str, t: float) -> None:
        """The receiver started playing (its first audio arrived); ends what it played before."""
        self.play_ended(receiver, t, "preempted")
        self._plays.setdefault(receiver, []).append(Played(receiver, source, ref, priority, t))
        if self._file is not None:
            self._file.write(json.dumps({"receiver": receiver, "t": t, "play": "start", "src": source, "ref": ref,
                                         "pri": priority}, separators=(",", ":")) + "\n")

    def play_ended(self, receiver: str, t: float, why: str) -> bool:
        """The receiver stopped playing; False (nothing recorded) if it was not playing."""
        plays = self._plays.get(receiver)
        if not plays or plays[-1].end is not None:
            return False
        last = plays[-1]
        plays[-1] = Played(last.receiver, last.source, last.ref, last.priority, last.start, t, why)
        if self._file is not None:
            self._file.write(json.dumps({"receiver": receiver, "t": t, "play": "end", "why": why},
                                        separators=(",", ":")) + "\n")
        return True

    def played(self, receiver: str) -> list[Played]:
        """What the receiver played, in order (the last one may still be playing)."""
        return list(self._plays.get(receiver, ()))

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
        plays: list[dict[str, object]] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                if '"play"' in line:
                    plays.append(json.loads(line))
                else:
                    rows.append(Transition.from_json(line))
        rows.sort(key=lambda r: r.t)
        for row in rows:
            truth.record(row.receiver, row.up, row.cause, row.t)
        for obj in plays:  # written in time order per receiver
            receiver, t = str(obj["receiver"]), float(obj["t"])  # type: ignore[arg-type]
            if obj["play"] == "start":
                truth.play_started(receiver, str(obj["src"]), str(obj["ref"]), str(obj["pri"]), t)
            elif obj["play"] == "end":
                truth.play_ended(receiver, t, str(obj["why"]))
            else:
                raise ValueError(f"play must be 'start' or 'end', not {obj['play']!r}")
        return truth

    @property
    def receivers(self) -> list[str]:
        return sorted(self._log.keys() | self._plays.keys())

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
