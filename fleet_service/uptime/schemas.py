from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from fleet_service.uptime.availability import Availability

# An answer lists at most this many outages (longest first); the counts cover all of them.
OUTAGES_LISTED_MAX = 500


class OutageOut(BaseModel):
    receiver_id: str
    start: datetime
    end: datetime
    duration_s: float
    ongoing: bool


class AvailabilityOut(BaseModel):
    scope: Literal["receiver", "station", "region"]
    id: str
    start: datetime
    end: datetime
    receivers: int
    observed_s: float
    online_s: float
    online_percent: float | None
    outage_count: int
    downtime_s: float
    longest_outage_s: float | None
    outages: list[OutageOut]

    @classmethod
    def build(cls, scope: Literal["receiver", "station", "region"], ident: str, a: Availability) -> AvailabilityOut:
        fraction = a.online_fraction
        longest = a.longest_outage
        listed = sorted(a.outages, key=lambda o: o.duration, reverse=True)[:OUTAGES_LISTED_MAX]
        return cls(
            scope=scope,
            id=ident,
            start=a.start,
            end=a.end,
            receivers=a.receivers,
            observed_s=a.observed.total_seconds(),
            online_s=a.online.total_seconds(),
            online_percent=None if fraction is None else fraction * 100,
            outage_count=len(a.outages),
            downtime_s=a.downtime.total_seconds(),
            longest_outage_s=None if longest is None else longest.duration.total_seconds(),
            outages=[OutageOut(receiver_id=o.receiver_id, start=o.start, end=o.end,
                               duration_s=o.duration.total_seconds(), ongoing=o.ongoing) for o in listed],
        )


class IntervalOut(BaseModel):
    state: str
    session: int | None
    start: datetime
    end: datetime | None
    start_cause: str
    end_cause: str | None
    station_id: int | None
