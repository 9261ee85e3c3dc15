"""What availability answers are made of. They are computed in SQL (availability_sql.py, the
one definition, shared with Grafana); the same arithmetic in Python is only the tests' oracle
(tests/fleet_service/uptime/oracle.py)."""

from __future__ import annotations

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
