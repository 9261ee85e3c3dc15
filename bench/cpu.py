"""CPU accounting shared by the benchmarks: a thread that samples the machine's counters
(/proc/stat) and the CPU ticks of the benchmark's processes, grouped by role."""

from __future__ import annotations

import os
import threading
import time

# (monotonic time, machine total ticks, machine idle ticks, {role: ticks})
Sample = tuple[float, int, int, dict[str, int]]


class ProcSampler(threading.Thread):
    def __init__(self, roles: dict[str, list[str]], *, interval_s: float, deadline_s: float) -> None:
        """``roles``: role -> /proc stat files (a process's, or one thread's under task/)."""
        super().__init__(daemon=True)
        self.roles = roles
        self.samples: list[Sample] = []
        self.tick = os.sysconf("SC_CLK_TCK")
        self._interval_s = interval_s
        self._deadline = time.monotonic() + deadline_s
        self._stop_event = threading.Event()
        self._last: dict[str, int] = {}

    def run(self) -> None:
        while not self._stop_event.is_set() and time.monotonic() < self._deadline:
            self.sample()
            self._stop_event.wait(self._interval_s)
        self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def sample(self) -> None:
        now = time.monotonic()
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        roles = {role: sum(self._ticks(path) for path in paths) for role, paths in self.roles.items()}
        self.samples.append((now, sum(fields), fields[3] + fields[4], roles))

    def _ticks(self, path: str) -> int:
        try:
            with open(path) as f:
                rest = f.read().rsplit(")", 1)[1].split()
            self._last[path] = int(rest[11]) + int(rest[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            pass  # gone: keep what it had used
        return self._last.get(path, 0)
