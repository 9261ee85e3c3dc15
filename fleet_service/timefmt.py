"""Times for people: Asia/Ho_Chi_Minh. Storage and the API's answers stay in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet_service.errors import Invalid

LOCAL_ZONE = ZoneInfo("Asia/Ho_Chi_Minh")


def _out_of_range() -> Invalid:
    return Invalid("Thời điểm nằm ngoài phạm vi cho phép", "The time is out of the supported range")


def as_utc(value: datetime) -> datetime:
    """A time given by a person without a zone means Vietnam time."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=LOCAL_ZONE)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # within a day of year 1 or 9999: no UTC time to give
        raise _out_of_range() from None


def period(start: datetime | None, end: datetime | None, default: timedelta = timedelta(days=1)) -> tuple[datetime, datetime]:
    """A period asked for by a person: either end may be left out (end: now; start: ``default``
    before the end); times without a zone are Vietnam time. Returned in UTC."""
    end_utc = as_utc(end) if end is not None else datetime.now(UTC)
    try:
        return (as_utc(start) if start is not None else end_utc - default), end_utc
    except OverflowError:
        raise _out_of_range() from None


def local_text(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(LOCAL_ZONE).strftime("%d/%m/%Y %H:%M:%S")


def duration_text(seconds: float) -> str:
    """1 ngày 02:03:04 / 02:03:04 — compact, readable in both languages."""
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days} ngày (d) {clock}" if days else clock
