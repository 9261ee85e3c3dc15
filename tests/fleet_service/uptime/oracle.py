"""The test oracle: availability as plain Python arithmetic on [start, end) intervals, written
straight from docs/uptime.md. The service and Grafana compute it in SQL
(fleet_service/uptime/availability_sql.py); the tests prove the SQL gives these answers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from fleet_service.uptime.availability import Availability, Outage, Span
from fleet_service.uptime.models import Connectivity


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
