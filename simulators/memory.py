"""Measure the Python memory one virtual receiver costs (tracemalloc), steady state.

Counted: everything allocated after the baseline: receivers, their links, sockets and
transports, MQTT clients, timers, the receivers' tasks, the event loop's bookkeeping for their
sockets and the ground truth's records. Not counted: kernel socket buffers (outside Python)
and the broker's side.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections.abc import Mapping
from dataclasses import dataclass

from simulators.fleet import Fleet


@dataclass(frozen=True, slots=True)
class MemoryReport:
    receivers: int
    total_bytes: int
    peak_bytes: int
    seconds_to_connect: float

    @property
    def bytes_per_receiver(self) -> float:
        return self.total_bytes / self.receivers if self.receivers else 0.0

    def __str__(self) -> str:
        return (
            f"{self.receivers} receivers: {self.total_bytes / 1024:.0f} KiB traced "
            f"({self.bytes_per_receiver:.0f} bytes per receiver; peak {self.peak_bytes / 1024:.0f} KiB), "
            f"all connected in {self.seconds_to_connect:.1f}s"
        )


async def measure(
    host: str,
    port: int,
    credentials: Mapping[str, str],
    *,
    telemetry_interval: float = 2.0,
    settle: float = 5.0,
    connect_timeout: float = 120.0,
) -> MemoryReport:
    """Run ``credentials`` as a fleet against the broker until every receiver is up and has
    sent telemetry for ``settle`` seconds, and report the memory traced meanwhile."""
    gc.collect()
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fleet = Fleet(
            host, port, credentials,
            keepalive=60, telemetry_interval=telemetry_interval,
            attach_delay=(0.0, min(2.0, len(credentials) / 1000)),
            backoff_base=0.5, backoff_cap=5.0, seed=0,
        )
        started = time.monotonic()
        await fleet.start()
        try:
            await fleet.wait_up(timeout=connect_timeout)
            # Up (birth sent) is not yet established (subscribed, event acknowledged): wait for
            # every receiver's first report, so that nothing transient is counted.
            while any(fleet.status(rid).telemetry_sent == 0 for rid in fleet.receivers):
                if time.monotonic() - started > connect_timeout:
                    raise TimeoutError("receivers did not all start reporting")
                await asyncio.sleep(0.1)
            connected = time.monotonic() - started
            await asyncio.sleep(settle)
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            await fleet.stop(clean=False)
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return MemoryReport(len(credentials), current - baseline, peak - baseline, connected)
