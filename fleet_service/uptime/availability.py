"""Availability from ledger intervals: pure arithmetic on [start, end) intervals."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fleet_service.uptime.models import Connectivity


@dataclass(frozen=True, slots=True)
class Span:
    receiver_id: str
    state: Connectivity
    start: datetime
    end: datetime | None  # None: still open


@dataclass(frozen=True, slots=True)
class Outage:
    receiver_id: str
    start: datetime
    end: datetime
    ongoing: bool

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Availability:
    start: datetime
    end: datetime
    # Receiver-seconds inside the window that the ledger covers (a receiver's time before it was
    # first seen is not part of its service life, so it is neither up nor down).
    observed: timedelta
    online: timedelta
    outages: list[Outage] = field(default_factory=list)
    receivers: int = 0

    @property
    def online_fraction(self) -> float | None:
        seconds = self.observed.total_seconds()
        return None if seconds == 0 else self.online.total_seconds() / seconds

    @property
    def longest_outage(self) -> Outage | None:
        return max(self.outages, key=lambda o: o.duration, default=None)

    @property
    def downtime(self) -> timedelta:
        return self.observed - self.online


def summarize(spans: Iterable[Span], start: datetime, end: datetime, now: datetime) -> Availability:
    """``spans`` may belong to several receivers (a station or region); figures are summed over
    receiver-time, so a region's online fraction is the share of its receivers' observed time
    spent online."""
    if end <= start:
        raise ValueError("the period must end after it starts")
    horizon = min(end, now)
    observed = timedelta()
    online = timedelta()
    outages: list[Outage] = []
    receivers: set[str] = set()
    for span in spans:
        span_end = span.end if span.end is not None else now
        lo, hi = max(span.start, start), min(span_end, horizon)
        if hi <= lo:
            continue
        receivers.add(span.receiver_id)
        observed += hi - lo
        if span.state is Connectivity.ONLINE:
            online += hi - lo
        else:
            outages.append(Outage(span.receiver_id, lo, hi, ongoing=span.end is None and hi == now))
    outages.sort(key=lambda o: (o.start, o.receiver_id))
    return Availability(start, end, observed, online, outages, len(receivers))
